"""Rank records: what the worker writes is what the agent reads."""

from __future__ import annotations

import os

import pytest

from elastic_healthcheck._torchrun.record import (
    COLLECTIVES,
    FLAG_BOOTSTRAP,
    RECORD_SIZE,
    RankRecord,
    create_record,
    read_record,
    record_path,
)


@pytest.fixture
def path(tmp_path):
    path = record_path(str(tmp_path), 1)
    create_record(path, 1_700_000_000.0)
    return path


def test_a_new_record_says_spawned_and_nothing_else(path):
    snapshot = read_record(path)
    assert snapshot is not None
    assert snapshot.spawn_time == 1_700_000_000.0
    assert (snapshot.pid, snapshot.global_rank, snapshot.progress_time, snapshot.steps) == (
        0,
        None,
        0.0,
        0,
    )
    assert not snapshot.in_collective and snapshot.collective is None
    assert not snapshot.exited
    assert os.path.getsize(path) == RECORD_SIZE


def test_worker_writes_are_read_back(path):
    record = RankRecord(path)
    try:
        record.start(4321, 7, FLAG_BOOTSTRAP)
        record.progress()
        record.progress()
        record.enter("all_reduce")
        inside = read_record(path)
        record.leave()
        record.exited()
        after = read_record(path)
    finally:
        record.close()
    assert inside is not None and after is not None
    assert (inside.pid, inside.global_rank, inside.steps) == (4321, 7, 2)
    assert inside.flags & FLAG_BOOTSTRAP
    assert inside.progress_time > 1_700_000_000.0
    assert inside.in_collective and inside.collective == "all_reduce"
    assert inside.collective_since >= inside.progress_time
    assert (after.entered, after.depth, after.collective, after.exited) == (1, 0, None, True)


def test_a_nested_collective_counts_once(path):
    record = RankRecord(path)
    try:
        record.enter("all_gather_object")
        record.enter("all_gather")  # all_gather_object runs all_gather inside
        nested = read_record(path)
        record.leave()
        still_inside = read_record(path)
        record.leave()
        out = read_record(path)
    finally:
        record.close()
    assert nested is not None and still_inside is not None and out is not None
    assert (nested.entered, nested.collective) == (1, "all_gather_object")
    assert still_inside.in_collective
    assert not out.in_collective and out.entered == 1


def test_an_unknown_collective_name_is_recorded_as_code_zero(path):
    record = RankRecord(path)
    try:
        record.enter("not_a_collective")
        snapshot = read_record(path)
    finally:
        record.close()
    assert snapshot is not None and snapshot.in_collective and snapshot.collective == ""


def test_recreating_a_record_leaves_an_old_mapping_writing_elsewhere(path):
    """A worker of the previous group cannot scribble on the new group's record."""
    old = RankRecord(path)
    try:
        create_record(path, 1_700_000_500.0)
        old.progress()
    finally:
        old.close()
    snapshot = read_record(path)
    assert snapshot is not None
    assert (snapshot.spawn_time, snapshot.steps) == (1_700_000_500.0, 0)


@pytest.mark.parametrize("content", [b"", b"short", b"\0" * RECORD_SIZE])
def test_what_is_not_a_record_reads_as_none_and_cannot_be_opened(tmp_path, content):
    path = tmp_path / "rank-0"
    path.write_bytes(content)
    assert read_record(str(path)) is None
    with pytest.raises(ValueError, match="not a rank record"):
        RankRecord(str(path))


def test_a_missing_record_reads_as_none(tmp_path):
    assert read_record(str(tmp_path / "rank-9")) is None
    with pytest.raises(FileNotFoundError):
        RankRecord(str(tmp_path / "rank-9"))


def test_collective_codes_are_unique():
    assert len(set(COLLECTIVES)) == len(COLLECTIVES)
