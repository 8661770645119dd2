"""The Prometheus text format 0.0.4, table-driven: a verdict in, exact bytes out, no sockets.

Format: https://prometheus.io/docs/instrumenting/exposition_formats/ . The reference
reader is prometheus_client's own parser.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from elastic_healthcheck._http.prometheus import (
    CONTENT_TYPE,
    PREFIX,
    _number,
    render_metrics,
)
from elastic_healthcheck._torchrun.verdict import AgentPhase, GroupVerdict, RankState, RankVerdict
from elastic_healthcheck.status import HealthStatus, Verdict, evaluate

NOW = 1_700_000_030.0

ALIVE = evaluate(1_700_000_000, timeout=60, now=NOW)
DEAD = evaluate(1_699_999_000.25, timeout=60, now=NOW)
UNKNOWN = HealthStatus.unknown(60, "callback raised RuntimeError")
UNKNOWN_NONE = evaluate(None, timeout=60, now=NOW)

PROBES = {Verdict.ALIVE: 3, Verdict.DEAD: 1}

STATUSES = [
    pytest.param(ALIVE, id="alive"),
    pytest.param(DEAD, id="dead"),
    pytest.param(UNKNOWN, id="unknown"),
    pytest.param(UNKNOWN_NONE, id="unknown-none"),
]


def _sample_lines(text: bytes) -> list[str]:
    return [line for line in text.decode("utf-8").split("\n") if line and line[0] != "#"]


def test_alive_exposition_exact_bytes():
    assert render_metrics(ALIVE, PROBES) == (
        b"# HELP elastic_healthcheck_alive"
        b" 1 if the agent made progress within the timeout, else 0 (dead or unknown).\n"
        b"# TYPE elastic_healthcheck_alive gauge\n"
        b"elastic_healthcheck_alive 1\n"
        b"# HELP elastic_healthcheck_verdict"
        b" The current verdict: 1 for the one that holds, 0 for the others.\n"
        b"# TYPE elastic_healthcheck_verdict gauge\n"
        b'elastic_healthcheck_verdict{verdict="alive"} 1\n'
        b'elastic_healthcheck_verdict{verdict="dead"} 0\n'
        b'elastic_healthcheck_verdict{verdict="unknown"} 0\n'
        b"# HELP elastic_healthcheck_last_progress_timestamp_seconds"
        b" Last progress time reported by the alive callback, in epoch seconds.\n"
        b"# TYPE elastic_healthcheck_last_progress_timestamp_seconds gauge\n"
        b"elastic_healthcheck_last_progress_timestamp_seconds 1700000000\n"
        b"# HELP elastic_healthcheck_progress_age_seconds Seconds since the last progress.\n"
        b"# TYPE elastic_healthcheck_progress_age_seconds gauge\n"
        b"elastic_healthcheck_progress_age_seconds 30\n"
        b"# HELP elastic_healthcheck_timeout_seconds"
        b" Seconds without progress after which the agent is dead.\n"
        b"# TYPE elastic_healthcheck_timeout_seconds gauge\n"
        b"elastic_healthcheck_timeout_seconds 60\n"
        b"# HELP elastic_healthcheck_probes_total Health probes answered, by verdict.\n"
        b"# TYPE elastic_healthcheck_probes_total counter\n"
        b'elastic_healthcheck_probes_total{verdict="alive"} 3\n'
        b'elastic_healthcheck_probes_total{verdict="dead"} 1\n'
        b'elastic_healthcheck_probes_total{verdict="unknown"} 0\n'
    )


def test_dead_samples_exact():
    """A dead verdict: alive 0, verdict dead 1, a fractional time printed with repr."""
    assert _sample_lines(render_metrics(DEAD, {})) == [
        "elastic_healthcheck_alive 0",
        'elastic_healthcheck_verdict{verdict="alive"} 0',
        'elastic_healthcheck_verdict{verdict="dead"} 1',
        'elastic_healthcheck_verdict{verdict="unknown"} 0',
        "elastic_healthcheck_last_progress_timestamp_seconds 1699999000.25",
        "elastic_healthcheck_progress_age_seconds 1029.75",
        "elastic_healthcheck_timeout_seconds 60",
        'elastic_healthcheck_probes_total{verdict="alive"} 0',
        'elastic_healthcheck_probes_total{verdict="dead"} 0',
        'elastic_healthcheck_probes_total{verdict="unknown"} 0',
    ]


@pytest.mark.parametrize(
    "status", [pytest.param(UNKNOWN, id="raised"), pytest.param(UNKNOWN_NONE, id="none")]
)
def test_unknown_times_are_nan(status):
    samples = _sample_lines(render_metrics(status, {Verdict.UNKNOWN: 2}))
    assert "elastic_healthcheck_alive 0" in samples
    assert 'elastic_healthcheck_verdict{verdict="unknown"} 1' in samples
    assert "elastic_healthcheck_last_progress_timestamp_seconds NaN" in samples
    assert "elastic_healthcheck_progress_age_seconds NaN" in samples
    assert 'elastic_healthcheck_probes_total{verdict="unknown"} 2' in samples


# -- the reference parser ----------------------------------------------------------------

# (family name as the parser reports it, type, sample name)
FAMILIES = [
    ("elastic_healthcheck_alive", "gauge", "elastic_healthcheck_alive"),
    ("elastic_healthcheck_verdict", "gauge", "elastic_healthcheck_verdict"),
    (
        "elastic_healthcheck_last_progress_timestamp_seconds",
        "gauge",
        "elastic_healthcheck_last_progress_timestamp_seconds",
    ),
    (
        "elastic_healthcheck_progress_age_seconds",
        "gauge",
        "elastic_healthcheck_progress_age_seconds",
    ),
    ("elastic_healthcheck_timeout_seconds", "gauge", "elastic_healthcheck_timeout_seconds"),
    # The parser names a counter family without its _total suffix, as OpenMetrics does.
    ("elastic_healthcheck_probes", "counter", "elastic_healthcheck_probes_total"),
]


def _parse(text: bytes) -> dict[str, Any]:
    parser = pytest.importorskip("prometheus_client.parser")
    return {f.name: f for f in parser.text_string_to_metric_families(text.decode("utf-8"))}


@pytest.mark.parametrize("status", STATUSES)
def test_reference_parser_reads_every_family_with_its_type(status):
    families = _parse(render_metrics(status, PROBES))
    assert [(name, f.type) for name, f in families.items()] == [(n, t) for n, t, _ in FAMILIES]
    for name, _, sample_name in FAMILIES:
        family = families[name]
        assert family.documentation
        assert {s.name for s in family.samples} == {sample_name}


def _values(status: HealthStatus, probes: dict[Verdict, int]) -> dict[tuple[str, str], float]:
    """(sample name, verdict label or "") -> value, as the reference parser reads them."""
    values: dict[tuple[str, str], float] = {}
    for family in _parse(render_metrics(status, probes)).values():
        for sample in family.samples:
            assert set(sample.labels) <= {"verdict"}
            assert sample.timestamp is None
            values[sample.name, sample.labels.get("verdict", "")] = sample.value
    return values


def test_reference_parser_reads_alive_values():
    assert _values(ALIVE, PROBES) == {
        ("elastic_healthcheck_alive", ""): 1.0,
        ("elastic_healthcheck_verdict", "alive"): 1.0,
        ("elastic_healthcheck_verdict", "dead"): 0.0,
        ("elastic_healthcheck_verdict", "unknown"): 0.0,
        ("elastic_healthcheck_last_progress_timestamp_seconds", ""): 1_700_000_000.0,
        ("elastic_healthcheck_progress_age_seconds", ""): 30.0,
        ("elastic_healthcheck_timeout_seconds", ""): 60.0,
        ("elastic_healthcheck_probes_total", "alive"): 3.0,
        ("elastic_healthcheck_probes_total", "dead"): 1.0,
        ("elastic_healthcheck_probes_total", "unknown"): 0.0,
    }


def test_reference_parser_reads_dead_fractional_values():
    values = _values(DEAD, {})
    assert values["elastic_healthcheck_alive", ""] == 0.0
    assert values["elastic_healthcheck_verdict", "dead"] == 1.0
    assert values["elastic_healthcheck_last_progress_timestamp_seconds", ""] == 1_699_999_000.25
    assert values["elastic_healthcheck_progress_age_seconds", ""] == 1029.75


def test_reference_parser_reads_unknown_times_as_nan():
    values = _values(UNKNOWN, {})
    assert values["elastic_healthcheck_verdict", "unknown"] == 1.0
    assert math.isnan(values["elastic_healthcheck_last_progress_timestamp_seconds", ""])
    assert math.isnan(values["elastic_healthcheck_progress_age_seconds", ""])
    assert values["elastic_healthcheck_timeout_seconds", ""] == 60.0


@pytest.mark.parametrize("verdict", list(Verdict))
def test_verdict_family_holds_exactly_one_verdict(verdict):
    status = {Verdict.ALIVE: ALIVE, Verdict.DEAD: DEAD, Verdict.UNKNOWN: UNKNOWN}[verdict]
    values = _values(status, {})
    assert {v.value: values["elastic_healthcheck_verdict", v.value] for v in Verdict} == {
        v.value: 1.0 if v is verdict else 0.0 for v in Verdict
    }


def test_missing_probe_counts_are_zero():
    """Every verdict label is present from the first scrape (no series appears later)."""
    values = _values(ALIVE, {})
    assert [values["elastic_healthcheck_probes_total", v.value] for v in Verdict] == [0, 0, 0]


# -- the text itself ---------------------------------------------------------------------


@pytest.mark.parametrize("status", STATUSES)
def test_help_and_type_appear_once_per_family_before_its_samples(status):
    lines = render_metrics(status, PROBES).decode("utf-8").split("\n")[:-1]
    helps = Counter(line.split(" ")[2] for line in lines if line.startswith("# HELP "))
    types = Counter(line.split(" ")[2] for line in lines if line.startswith("# TYPE "))
    names = [sample for _, _, sample in FAMILIES]
    assert helps == types == Counter(names)
    for i, line in enumerate(lines):
        if line.startswith("# HELP "):
            name = line.split(" ")[2]
            assert lines[i + 1].startswith(f"# TYPE {name} ")
            assert lines[i + 2].startswith(name)  # samples follow their TYPE at once
        elif not line.startswith("#"):
            # A sample belongs to the family whose TYPE line came last.
            family = next(x for x in reversed(lines[:i]) if x.startswith("# TYPE "))
            assert line.split("{")[0].split(" ")[0] == family.split(" ")[2]


@pytest.mark.parametrize("status", STATUSES)
def test_text_ends_with_exactly_one_newline(status):
    text = render_metrics(status, PROBES)
    assert text.endswith(b"\n")
    assert not text.endswith(b"\n\n")


@pytest.mark.parametrize("status", STATUSES)
def test_text_has_lf_lines_and_no_blank_lines(status):
    text = render_metrics(status, PROBES)
    assert b"\r" not in text
    assert b"\n\n" not in text
    assert b"" not in text[:-1].split(b"\n")


@pytest.mark.parametrize("status", STATUSES)
def test_every_name_has_the_prefix(status):
    for line in render_metrics(status, PROBES).decode("utf-8").split("\n")[:-1]:
        name = line.split(" ")[2] if line.startswith("#") else line
        assert name.startswith(PREFIX), line


def test_content_type_is_text_format_0_0_4():
    assert CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"


def test_fractional_timeout_is_repr():
    status = evaluate(NOW, timeout=0.5, now=NOW)
    assert "elastic_healthcheck_timeout_seconds 0.5" in _sample_lines(render_metrics(status, {}))


# -- numbers -----------------------------------------------------------------------------

NUMBERS = [
    pytest.param(0.0, "0", id="zero"),
    pytest.param(-0.0, "0", id="negative-zero"),
    pytest.param(1.0, "1", id="one"),
    pytest.param(-3.0, "-3", id="negative-integer"),
    pytest.param(60.0, "60", id="integer-timeout"),
    pytest.param(1_700_000_000.0, "1700000000", id="epoch-seconds"),
    pytest.param(float(2**53 - 1), "9007199254740991", id="largest-exact-integer"),
    pytest.param(float(2**53), "9007199254740992.0", id="beyond-exact-integers-is-repr"),
    pytest.param(1e300, "1e+300", id="huge-is-repr"),
    pytest.param(0.5, "0.5", id="half"),
    pytest.param(0.1, "0.1", id="shortest-repr"),
    pytest.param(1_700_000_000.25, "1700000000.25", id="fractional-epoch"),
    pytest.param(1e-09, "1e-09", id="tiny"),
    pytest.param(-2.5, "-2.5", id="negative-fraction"),
    pytest.param(math.nan, "NaN", id="nan"),
    pytest.param(math.inf, "+Inf", id="plus-inf"),
    pytest.param(-math.inf, "-Inf", id="minus-inf"),
]


@pytest.mark.parametrize(("value", "text"), NUMBERS)
def test_number_spelling(value, text):
    assert _number(value) == text


@pytest.mark.parametrize(("value", "text"), NUMBERS)
def test_reference_parser_reads_number_back(value, text):
    """Each spelling, in a sample line, is read back as the same value."""
    family = next(iter(_parse(f"# TYPE m gauge\nm {text}\n".encode()).values()))
    (sample,) = family.samples
    assert sample.value == value or (math.isnan(value) and math.isnan(sample.value))


@settings(max_examples=300, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_number_is_an_exact_integer_or_repr(value):
    """Any float reads back exactly: whole numbers bare, the rest as repr()."""
    text = _number(value)
    if math.isnan(value):
        assert text == "NaN"
        return
    assert float(text) == value
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        assert text == str(int(value))
    elif math.isfinite(value):
        assert text == repr(value)


# -- the families a verdict's detail offers (the torch integration's) -----------------


def _rank(state: RankState, age: float, rank: int | None, steps: int, collectives: int,
          inside: str | None, phase: str = "training") -> RankVerdict:  # fmt: skip
    return RankVerdict(
        state, age, rank, 4100, steps, collectives, inside, 1.2 if inside else None, phase
    )


def _verdict(**changes: Any) -> GroupVerdict:
    """Two local ranks of job-42 after one restart: rank 1 stalled, rank 0 in all_reduce."""
    fields: dict[str, Any] = {
        "verdict": Verdict.ALIVE,
        "timeout": 60.0,
        "last_progress": NOW,
        "age": 0.0,
        "phase": AgentPhase.RUNNING,
        "counters": {"run_id": "job-42", "restarts": 1, "hang_restarts": 0},
        "ranks": {
            "0": _rank(RankState.PROGRESSING, 0.42, 8, 120, 240, "all_reduce"),
            "1": _rank(RankState.STALLED, 70.5, 9, 119, 239, None, "checkpoint"),
        },
        "suspects": ("1",),
    }
    fields.update(changes)
    return GroupVerdict(**fields)


RANK_VERDICT = _verdict()


def _detail_samples(detail: Any) -> list[str]:
    """The sample lines that come after the six families every verdict has."""
    lines = _sample_lines(render_metrics(ALIVE.with_detail(detail), {}))
    return [line for line in lines if not line.startswith(tuple(s for _, _, s in FAMILIES))]


def test_full_detail_samples_exact():
    assert _detail_samples(RANK_VERDICT) == [
        'elastic_healthcheck_agent_phase{phase="starting"} 0',
        'elastic_healthcheck_agent_phase{phase="rendezvous"} 0',
        'elastic_healthcheck_agent_phase{phase="running"} 1',
        'elastic_healthcheck_agent_phase{phase="restarting"} 0',
        'elastic_healthcheck_agent_phase{phase="exit_barrier"} 0',
        'elastic_healthcheck_agent_phase{phase="stopped"} 0',
        'elastic_healthcheck_agent_info{run_id="job-42"} 1',
        "elastic_healthcheck_worker_group_restarts_total 1",
        "elastic_healthcheck_hang_restarts_total 0",
        'elastic_healthcheck_rank_state{local_rank="0",state="starting"} 0',
        'elastic_healthcheck_rank_state{local_rank="0",state="progressing"} 1',
        'elastic_healthcheck_rank_state{local_rank="0",state="busy"} 0',
        'elastic_healthcheck_rank_state{local_rank="0",state="waiting"} 0',
        'elastic_healthcheck_rank_state{local_rank="0",state="stalled"} 0',
        'elastic_healthcheck_rank_state{local_rank="0",state="exited"} 0',
        'elastic_healthcheck_rank_state{local_rank="1",state="starting"} 0',
        'elastic_healthcheck_rank_state{local_rank="1",state="progressing"} 0',
        'elastic_healthcheck_rank_state{local_rank="1",state="busy"} 0',
        'elastic_healthcheck_rank_state{local_rank="1",state="waiting"} 0',
        'elastic_healthcheck_rank_state{local_rank="1",state="stalled"} 1',
        'elastic_healthcheck_rank_state{local_rank="1",state="exited"} 0',
        'elastic_healthcheck_rank_phase{local_rank="0",phase="training"} 1',
        'elastic_healthcheck_rank_phase{local_rank="1",phase="checkpoint"} 1',
        'elastic_healthcheck_rank_progress_age_seconds{local_rank="0"} 0.42',
        'elastic_healthcheck_rank_progress_age_seconds{local_rank="1"} 70.5',
        'elastic_healthcheck_rank_in_collective{local_rank="0"} 1',
        'elastic_healthcheck_rank_in_collective{local_rank="1"} 0',
        'elastic_healthcheck_rank_collectives_total{local_rank="0"} 240',
        'elastic_healthcheck_rank_collectives_total{local_rank="1"} 239',
        'elastic_healthcheck_rank_steps_total{local_rank="0"} 120',
        'elastic_healthcheck_rank_steps_total{local_rank="1"} 119',
        'elastic_healthcheck_rank_suspect{local_rank="0"} 0',
        'elastic_healthcheck_rank_suspect{local_rank="1"} 1',
        'elastic_healthcheck_rank_info{local_rank="0",rank="8"} 1',
        'elastic_healthcheck_rank_info{local_rank="1",rank="9"} 1',
    ]


@pytest.mark.parametrize("phase", list(AgentPhase))
def test_every_phase_has_a_sample_and_only_the_current_one_is_1(phase):
    samples = _detail_samples(_verdict(phase=phase, counters={}, ranks=None, suspects=None))
    assert samples == [
        f'elastic_healthcheck_agent_phase{{phase="{p.value}"}} {1 if p is phase else 0}'
        for p in AgentPhase
    ]


def test_a_plain_detail_adds_no_families():
    """Only a detail that offers metric_families() adds any: a dict never does."""
    assert _detail_samples({"phase": "running", "ranks": {"0": 1.5}, "run_id": "x"}) == []
    assert _detail_samples(None) == []


def test_empty_suspect_list_gives_every_rank_0():
    suspects = [s for s in _detail_samples(_verdict(suspects=())) if "rank_suspect" in s]
    assert suspects == [
        'elastic_healthcheck_rank_suspect{local_rank="0"} 0',
        'elastic_healthcheck_rank_suspect{local_rank="1"} 0',
    ]


def test_unknown_global_rank_has_no_info_sample():
    ranks = {"0": _rank(RankState.STARTING, 2.0, None, 0, 0, None)}
    samples = _detail_samples(_verdict(ranks=ranks))
    assert not [s for s in samples if "rank_info" in s]
    assert 'elastic_healthcheck_rank_progress_age_seconds{local_rank="0"} 2' in samples


def test_counters_that_are_not_whole_numbers_are_left_out():
    samples = _detail_samples(_verdict(counters={"restarts": -1, "hang_restarts": True}))
    assert not [s for s in samples if "restarts" in s]


def test_label_values_are_escaped():
    ranks = {'x"\n': _rank(RankState.PROGRESSING, 1.0, 3, 1, 1, None)}
    detail = _verdict(counters={"run_id": 'a"b\\c\nd'}, ranks=ranks, suspects=None)
    text = render_metrics(ALIVE.with_detail(detail), {})
    samples = _sample_lines(text)
    assert 'elastic_healthcheck_agent_info{run_id="a\\"b\\\\c\\nd"} 1' in samples
    assert 'elastic_healthcheck_rank_info{local_rank="x\\"\\n",rank="3"} 1' in samples
    families = _parse(text)
    (info,) = families["elastic_healthcheck_agent_info"].samples
    assert info.labels == {"run_id": 'a"b\\c\nd'}


# (family name as the parser reports it, type, label names) for the detail families.
DETAIL_FAMILIES = [
    ("elastic_healthcheck_agent_phase", "gauge", {"phase"}),
    ("elastic_healthcheck_agent_info", "gauge", {"run_id"}),
    ("elastic_healthcheck_worker_group_restarts", "counter", set()),
    ("elastic_healthcheck_hang_restarts", "counter", set()),
    ("elastic_healthcheck_rank_state", "gauge", {"local_rank", "state"}),
    ("elastic_healthcheck_rank_phase", "gauge", {"local_rank", "phase"}),
    ("elastic_healthcheck_rank_progress_age_seconds", "gauge", {"local_rank"}),
    ("elastic_healthcheck_rank_in_collective", "gauge", {"local_rank"}),
    ("elastic_healthcheck_rank_collectives", "counter", {"local_rank"}),
    ("elastic_healthcheck_rank_steps", "counter", {"local_rank"}),
    ("elastic_healthcheck_rank_suspect", "gauge", {"local_rank"}),
    ("elastic_healthcheck_rank_info", "gauge", {"local_rank", "rank"}),
]


def test_reference_parser_reads_every_detail_family_with_its_type_and_labels():
    families = _parse(render_metrics(DEAD.with_detail(RANK_VERDICT), PROBES))
    detail_families = list(families)[len(FAMILIES) :]
    assert detail_families == [name for name, _, _ in DETAIL_FAMILIES]
    for name, kind, labels in DETAIL_FAMILIES:
        family = families[name]
        assert family.type == kind
        assert family.documentation
        assert all(set(s.labels) == labels for s in family.samples), name


def test_reference_parser_reads_rank_values():
    families = _parse(render_metrics(ALIVE.with_detail(RANK_VERDICT), {}))

    def value(family: str, **labels: str) -> float:
        (sample,) = [s for s in families[family].samples if s.labels == labels]
        return float(sample.value)

    assert value("elastic_healthcheck_rank_collectives", local_rank="1") == 239
    assert value("elastic_healthcheck_rank_progress_age_seconds", local_rank="0") == 0.42
    assert value("elastic_healthcheck_rank_state", local_rank="1", state="stalled") == 1
    assert value("elastic_healthcheck_worker_group_restarts") == 1


def test_promtool_check_metrics_passes_on_full_detail(tmp_path):
    """The metric names, types and help texts pass Prometheus's own linter."""
    import shutil
    import subprocess

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian package prometheus)")
    text = render_metrics(DEAD.with_detail(RANK_VERDICT), PROBES)
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout + result.stderr == b""
