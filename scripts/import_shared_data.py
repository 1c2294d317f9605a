"""Rebuild the cases files of the tickets, receipts and contracts suites from the shared data sets.

Run once by a maintainer (`python scripts/import_shared_data.py DATA_DIR`); the suites hold the output, so
nothing is downloaded at run time. Orders are seeded, so the file's first N cases, the default sample of a
run, are a fair sample: tickets round-robin over the 77 intents, receipts and contracts shuffled.
"""

from __future__ import annotations

import json
import random
import sys
from collections import defaultdict
from pathlib import Path

SEED = 20261122
ROOT = Path(__file__).resolve().parent.parent / "suites"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def tickets(data: Path) -> None:
    """BANKING77: one row per query, `label` the gold intent; round-robin over intents, so any prefix is balanced."""
    rng = random.Random(SEED)
    by_label: dict[str, list[dict]] = defaultdict(list)
    for row in _rows(data / "banking77" / "cases.jsonl"):
        by_label[row["label"]].append({"id": row["id"], "text": row["text"], "label": row["label"]})
    labels = sorted(by_label)
    for rows in by_label.values():
        rng.shuffle(rows)
    out = []
    for i in range(max(len(rows) for rows in by_label.values())):
        order = labels[:]
        rng.shuffle(order)
        out.extend(by_label[label][i] for label in order if i < len(by_label[label]))
    _write(ROOT / "tickets" / "cases.jsonl", out)
    (ROOT / "tickets" / "labels.json").write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")


def receipts(data: Path) -> None:
    """WildReceipt: text and gold as given (list-valued fields, line items)."""
    rows = [{"id": r["id"], "text": r["text"], "gold": r["gold"]} for r in _rows(data / "wildreceipt" / "cases.jsonl")]
    random.Random(SEED).shuffle(rows)
    _write(ROOT / "receipts" / "cases.jsonl", rows)


def contracts(data: Path) -> None:
    """CUAD: the full contract, and gold per category: present, answer, spans (offsets into `text`)."""
    rows = []
    for r in _rows(data / "cuad" / "cases.jsonl"):
        gold = {
            c["category"]: {
                "present": c["present"], "answer": c["answer"],
                "spans": [{"text": s["text"], "start": s["start"], "end": s["end"]} for s in c["spans"]],
            }
            for c in r["clauses"]
        }
        rows.append({"id": r["id"], "title": r["title"], "contract_type": r["contract_type"], "text": r["text"],
                     "gold": gold})
    random.Random(SEED).shuffle(rows)
    _write(ROOT / "contracts" / "cases.jsonl", rows)


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data")
    for build in (tickets, receipts, contracts):
        (ROOT / build.__name__).mkdir(exist_ok=True)
        build(source)
        print(f"suites/{build.__name__}: done")
