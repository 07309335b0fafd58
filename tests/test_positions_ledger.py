"""Capital ledger: both shapes accepted and named, everything else rejected clearly."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from tickvault.core.errors import LedgerError, PositionError
from tickvault.positions import parse_capital_ledger, read_capital_ledger


def test_dict_shape() -> None:
    r = parse_capital_ledger({"capital": 10_000, "ts": "2026-06-11T00:00:00Z", "note": "x"})
    assert (r.shape, r.capital, r.entries) == ("dict", 10_000.0, 1)
    assert r.ts == 1_781_136_000_000_000


def test_list_shape_takes_the_latest_by_ts() -> None:
    r = parse_capital_ledger(
        [
            {"capital": 3.0, "ts": 1_781_000_300},
            {"capital": 1.0, "ts": 1_781_000_100},
            {"capital": 2.0, "ts": "2026-06-09T10:16:40Z"},
        ]
    )
    assert (r.shape, r.capital, r.entries, r.ts) == ("list", 3.0, 3, 1_781_000_300_000_000)


def test_list_shape_without_ts_takes_the_last_entry() -> None:
    r = parse_capital_ledger([{"capital": 1.0}, {"capital": -250.5}])
    assert (r.shape, r.capital, r.ts) == ("list", -250.5, None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("10000", "is a str; expected an object"),
        (10_000, "is a int; expected an object"),
        (None, "is a NoneType; expected"),
        ([], "is an empty list"),
        ([{"capital": 1.0}, 5], "entry 1 is a int; expected an object"),
        ([{"capital": 1.0}, {"equity": 2.0}], "entry 1 has no 'capital' (keys: equity)"),
        ({"capital": "1000"}, "capital '1000' is not a number"),
        ({"capital": True}, "capital True is not a number"),
        ({"capital": math.nan}, "capital nan is not finite"),
        ({"capital": 1.0, "ts": "yesterday"}, "not an ISO-8601 timestamp: 'yesterday'"),
    ],
)
def test_other_shapes_are_rejected_with_a_clear_message(data: Any, message: str) -> None:
    with pytest.raises(LedgerError) as info:
        parse_capital_ledger(data)
    assert message in str(info.value)
    assert isinstance(info.value, PositionError)


def test_read_file(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    with pytest.raises(LedgerError, match="no capital ledger"):
        read_capital_ledger(path)
    path.write_text("{oops")
    with pytest.raises(LedgerError, match="not JSON"):
        read_capital_ledger(path)
    path.write_text(json.dumps([{"capital": 5.0}]))
    reading = read_capital_ledger(path)
    assert reading.shape == "list" and reading.origin == f"capital ledger {path}"
