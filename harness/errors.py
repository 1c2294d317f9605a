"""Typed errors. The library raises these; the CLI turns each into one line and exit status 2."""


class HarnessError(Exception):
    """Base class for every error the harness reports to a user."""


class SuiteError(HarnessError):
    """A suite's config, cases or template is invalid. The message names the file, line or key."""


class ProviderError(HarnessError):
    """A provider cannot be built from its spec (unknown kind, malformed id)."""


class ServerError(HarnessError):
    """A local model server could not be started or did not become healthy."""


class StoreError(HarnessError):
    """The DuckDB store cannot be opened, migrated or queried as asked (e.g. an unknown run id)."""


class RunError(HarnessError):
    """A stored run cannot answer what was asked of it: no candidate or incumbent ran, a provider it does not
    have, a score it never computed."""


class LogError(HarnessError):
    """A production log cannot be read: the file is missing, or a line is not a logged call. Names file and line."""


class PricingError(HarnessError):
    """A pricing file is missing or invalid. The message names the file and the field, and the fix."""


class ProfileError(HarnessError):
    """A workload profile is missing or invalid. The message names the file and the key, and the fix."""


class CostError(HarnessError):
    """The cost model cannot be computed from this run and profile (no price, no throughput...)."""


class BudgetError(HarnessError):
    """A spending ceiling cannot be kept as asked: it is below one call's worst case, or a paid provider has no
    price. The message names the provider, the figures and the fix."""
