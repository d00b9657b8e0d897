"""`ime-segments merge` behind its options (cli/segments.py): inputs checked, OUT locked, what an interrupted run
left dealt with, the merge (merge.py) written into the staging directory and moved into OUT (merge_staging.py)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from recorder.errors import EXIT_RUNTIME, UserError
from recorder.progress import Progress
from recorder.segment.cli_inputs import PROG, report_damage
from recorder.segment.files import SealedSegment, SegmentWriteError
from recorder.segment.merge import check_paths, merge, report_lines
from recorder.segment.merge_staging import (
    MergeOutputError,
    complete_record,
    discard,
    finish,
    lock_output,
    staging_dir,
    start,
    take_over,
)
from recorder.segment.reader import Damage, SegmentFile, discover, input_files, open_files, open_segment
from recorder.segment.writer import SegmentWriter

MERGE_BACKLOG_BYTES = 64 << 20  # raw bytes queued for compression before the merge waits for the writer


def run_merge(inputs: tuple[Path, ...], out: Path, keep_receipts: bool, dedupe_window: float, show: int) -> None:
    given = [(p, input_files([p])) for p in inputs]
    problem = check_paths(inputs, out)
    if problem is not None:
        raise UserError(problem)
    # What decides the output: a rerun that finds this merge finished (see merge_staging) reports it as its own.
    arguments = {"inputs": [str(p.resolve()) for p in inputs], "keep_receipts": keep_receipts,
                 "dedupe_window": dedupe_window}
    # Held (noted, not raised) while a leftover is dealt with: a half-finished move must not be left half-done.
    guard = guard_signals()
    try:
        lock = lock_output(out)
    except MergeOutputError as exc:
        raise UserError(str(exc)) from None
    try:
        merge_locked(out, given, arguments, keep_receipts, dedupe_window, show, guard)
    finally:
        os.close(lock)


def merge_locked(out: Path, given: list[tuple[Path, list[Path]]], arguments: dict[str, object], keep_receipts: bool,
                 dedupe_window: float, show: int, guard: SignalGuard) -> None:
    """The merge once OUT is locked: leftovers of an interrupted run, the merge into staging, the move into OUT."""
    resume(out, arguments, guard)
    if discover([out]):
        raise UserError(f"--out {out} already holds segment files; give a new or empty directory")
    staged = StagedMerge(out, keep_receipts, dedupe_window, show)
    staged.run_guarded(guard, given)
    # Complete: from here a signal is ignored, and the files are moved into place whatever comes.
    staged.report.append(f"{len(staged.sealed)} sealed files in {out}, "
                         + ("verified" if not staged.output_damage else "DAMAGED"))
    code = EXIT_RUNTIME if staged.output_damage or staged.input_damage or staged.unreadable else 0
    try:
        finish(out, [s.path for s in staged.sealed], {"arguments": arguments, "report": staged.report, "exit": code})
    except MergeOutputError as exc:
        raise UserError(str(exc), EXIT_RUNTIME) from None
    for line in staged.report:
        click.echo(line)
    report_damage([*staged.output_damage, *staged.input_damage])
    if code:
        sys.exit(code)


def resume(out: Path, arguments: dict[str, object], guard: SignalGuard) -> None:
    """Deal with what an interrupted merge left in OUT (merge_staging.take_over); when OUT already holds this very
    merge complete (perhaps its process was killed before it could report), report it again and exit."""
    try:
        leftover = take_over(out)
        record = complete_record(out)
    except MergeOutputError as exc:
        raise UserError(str(exc)) from None
    if leftover is not None and not leftover.complete:
        click.echo(f"{PROG}: removed the unfinished output of an interrupted merge ({leftover.files} files in "
                   f"{staging_dir(out)}); merging from the start", err=True)
    elif leftover is not None:
        click.echo(f"{PROG}: an earlier merge into {out} had finished but was interrupted while moving its "
                   f"{leftover.files} files into place; this run finished the move", err=True)
    if record is None or record.get("arguments") != arguments:
        return
    guard.ignore()
    if leftover is None:
        click.echo(f"{PROG}: {out} already holds the complete output of this merge (the same inputs and "
                   "options); nothing to do", err=True)
    for line in record.get("report", []):
        click.echo(line)
    sys.exit(int(record.get("exit", 0)))


class StagedMerge:
    """The merge itself, written into the staging directory (recorder/segment/merge_staging.py)."""

    def __init__(self, out: Path, keep_receipts: bool, dedupe_window: float, show: int) -> None:
        self.out = out
        self.staging = staging_dir(out)
        self.keep_receipts, self.dedupe_window, self.show = keep_receipts, dedupe_window, show
        self.writers: list[SegmentWriter] = []
        self.sealed: list[SealedSegment] = []
        self.report: list[str] = []
        self.output_damage: list[Damage] = []
        self.input_damage: list[Damage] = []
        self.unreadable = 0

    def run_guarded(self, guard: SignalGuard, given: list[tuple[Path, list[Path]]]) -> None:
        """`run`, stopped by Ctrl-C and SIGTERM until its files are complete; stopped, nothing is left in OUT."""
        out = self.out
        try:
            guard.release()
            start(out)
            self.run(given)
            guard.ignore()
        except Interrupted as exc:
            guard.ignore()
            self.abort()
            discard(out)
            click.echo(f"{PROG}: merge interrupted by {signal.Signals(exc.signum).name} before it finished: nothing "
                       f"was written to {out} (its partial output was removed); run the same command again to merge "
                       "from the start", err=True)
            sys.exit(128 + exc.signum)
        except BaseException:
            guard.hold()
            self.abort()
            discard(out)
            raise

    def run(self, given: list[tuple[Path, list[Path]]]) -> None:
        opened: list[tuple[str, list[SegmentFile]]] = []
        for p, files in given:
            segs, unreadable = open_files(files)
            report_damage(f"skipped {problem}" for problem in unreadable)
            self.unreadable += len(unreadable)
            opened.append((str(p), segs))
        inputs = [s for _, segs in opened for s in segs]
        try:
            # Counted by the readers as they go (records read so far), so the merge's loop pays nothing for the bar.
            with Progress(sum(s.records for s in inputs), "merging",
                          poll=lambda: sum(s.records_salvaged for s in inputs)):
                result = merge(opened, lambda number, shard: self.writer_for(opened, number, shard),
                               keep_receipts=self.keep_receipts, window_ns=int(self.dedupe_window * 1e9),
                               after_batch=self.pace)
                for w in self.writers:
                    self.sealed.extend(w.close("merged"))
        except SegmentWriteError as exc:
            raise UserError(str(exc), EXIT_RUNTIME) from None
        with Progress(sum(s.compressed_bytes for s in self.sealed), "verifying the merged files") as bar:
            self.output_damage = [d for s in self.sealed for d in open_segment(s.path).verify(progress=bar.advance)]
        self.input_damage = [d for st in result.inputs for d in st.damage]
        self.report = report_lines(result, self.show)

    def writer_for(self, opened: list[tuple[str, list[SegmentFile]]], number: int, shard: int) -> SegmentWriter:
        """One output shard per input shard, numbered in order of appearance."""
        name, segs = opened[number]
        writer = SegmentWriter(self.staging, shard=len(self.writers), prefix="ime", flush_ms=1000, rotate_seconds=0,
                               name_by_data=True, meta={**merged_meta([s for s in segs if s.shard == shard]),
                                                        "merged_from": [n for n, _ in opened], "input": name,
                                                        "input_shard": shard})
        self.writers.append(writer)
        return writer

    def pace(self) -> None:
        for w in self.writers:
            if w.backlog_bytes > MERGE_BACKLOG_BYTES:
                w.flush()

    def abort(self) -> None:
        """Stop every writer thread without writing more: nothing writes into the staging directory after this."""
        for w in self.writers:
            w.abort()


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived while the merge was writing (a BaseException, like KeyboardInterrupt, so that no
    `except Exception` on the way swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class SignalGuard:
    """SIGINT and SIGTERM while held are only noted; released, they raise Interrupted in the main thread (once:
    a second signal during the clean-up that follows is only noted)."""

    def __init__(self) -> None:
        self.held = True
        self.pending: int | None = None

    def handle(self, signum: int, _frame: object) -> None:
        if self.held:
            self.pending = self.pending or signum
            return
        self.held = True
        raise Interrupted(signum)

    def release(self) -> None:
        self.held = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            self.held = True
            raise Interrupted(signum)

    def hold(self) -> None:
        self.held = True

    def ignore(self) -> None:
        """Nothing is left to stop: SIGINT and SIGTERM are ignored for the rest of the process. (Python puts the
        default action back in place of its own handlers as it exits, and a late signal must not kill a process
        that has done its work: a rerun could not tell.)"""
        self.held = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def guard_signals() -> SignalGuard:
    """Route SIGINT and SIGTERM through a SignalGuard, held, for the rest of the process (until `ignore`): they are
    not put back, so that a late signal cannot turn a finished merge into a killed process."""
    guard = SignalGuard()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, guard.handle)
    return guard


def merged_meta(segs: list[SegmentFile]) -> dict[str, object]:
    """Header keys for merged files: the subscription, when the files they came from agree on the endpoint."""
    endpoints = {s.header.meta.get("endpoint") for s in segs}
    meta: dict[str, object] = {"role": "ime-segments merge"}
    if len(endpoints) == 1 and None not in endpoints:
        contracts: dict[str, None] = {}
        for s in segs:
            listed = s.header.meta.get("contracts")
            if isinstance(listed, list):
                contracts.update(dict.fromkeys(str(c) for c in listed))
        meta["endpoint"] = endpoints.pop()
        meta["contracts"] = list(contracts)
    return meta
