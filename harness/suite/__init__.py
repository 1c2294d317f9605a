"""What a suite is: suite.toml's schema (spec), its cases and templates (load) and its workload profile."""
