"""The hook's wire format: every valid report survives encode then decode unchanged; decode raises only Rejected."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dbwatch import labels
from dbwatch.hook import wire
from dbwatch.logs.classify import Category

LIMITS = wire.Limits(max_bytes=1 << 24)

counts = st.integers(0, 2**53 - 1)
seconds = st.floats(0, 1e9, allow_nan=False, allow_infinity=False)
names = st.from_regex(wire.NAME_RE, fullmatch=True)
classes = st.from_regex(wire.CLASS_RE, fullmatch=True)
segments = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters="/?#"), max_size=12)
routes = st.one_of(
    st.lists(segments, max_size=10).map(lambda parts: labels.route("/" + "/".join(parts))),
    st.sampled_from((labels.UNMATCHED, labels.OTHER)),
)


def histograms(bounds: tuple[float, ...]) -> st.SearchStrategy[wire.Histogram]:
    return st.builds(wire.Histogram, st.tuples(*[counts] * (len(bounds) + 1)), seconds)


engines = st.builds(
    wire.EngineReport,
    engine=names,
    pool_class=classes,
    settings=st.dictionaries(st.sampled_from(wire.SETTINGS), st.floats(allow_nan=False, allow_infinity=False)),
    gauges=st.fixed_dictionaries(dict.fromkeys(wire.GAUGES, counts)),
    counters=st.fixed_dictionaries(dict.fromkeys(wire.COUNTERS, counts)),
    hists=st.fixed_dictionaries({k: histograms(b) for k, b in wire.HISTS.items()}),
    errors=st.dictionaries(classes, counts, max_size=LIMITS.max_names + 1),
    findings=st.lists(st.sampled_from(wire.FINDINGS), max_size=4).map(tuple),
)
request_rows = st.builds(
    wire.RequestRow,
    routes,
    st.sampled_from(labels.METHODS),
    st.sampled_from(wire.STATUS_CLASSES),
    st.tuples(*[counts] * (len(wire.LAYOUTS["request"]) + 1)),
    seconds,
)
exception_rows = st.builds(wire.ExceptionRow, routes, classes, st.sampled_from([c.value for c in Category]), counts)
reports = st.builds(
    wire.Report,
    app=names,
    worker=st.from_regex(wire.WORKER_RE, fullmatch=True),
    seq=counts,
    interval=st.none() | seconds,
    dropped=st.dictionaries(st.sampled_from(wire.DROP_REASONS), counts),
    engines=st.none() | st.lists(engines, max_size=3, unique_by=lambda e: e.engine).map(tuple),
    requests=st.lists(request_rows, max_size=5).map(tuple),
    exceptions=st.lists(exception_rows, max_size=5).map(tuple),
    token=st.none() | st.text(max_size=40),
)


@settings(max_examples=200, deadline=None)
@given(reports)
def test_every_report_survives_encode_and_decode(report: wire.Report) -> None:
    """decode(encode(r)) == r for every report a hook can build (routes already normalised by the label policy)."""
    token = report.token.encode(errors="replace") if report.token is not None else None
    limits = wire.Limits(max_bytes=LIMITS.max_bytes, token=token)
    assert wire.decode(wire.encode(report), limits) == report


json_docs = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
).map(lambda doc: json.dumps(doc).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000) | json_docs)
def test_decode_raises_only_rejected(data: bytes) -> None:
    """Arbitrary bytes and arbitrary JSON are decoded or rejected with a known reason; nothing else escapes."""
    result = "decoded"
    try:
        wire.decode(data, LIMITS)
    except wire.Rejected as exc:
        result = exc.result
    assert result in ("decoded", *wire.REJECTIONS)


def test_a_wrong_token_is_rejected() -> None:
    """With a token configured, a report without it or with another one is `bad_token`."""
    report = wire.Report(app="shop", worker="w", seq=1)
    limits = wire.Limits(token=b"right")
    for token in (None, "wrong"):
        with pytest.raises(wire.Rejected) as err:
            wire.decode(wire.encode(wire.Report(app="shop", worker="w", seq=1, token=token)), limits)
        assert err.value.result == "bad_token"
    assert wire.decode(wire.encode(report), wire.Limits()) == report
