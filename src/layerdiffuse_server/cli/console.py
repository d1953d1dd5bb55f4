"""What the commands print on stderr: errors, logs, and progress (a bar on a terminal, plain lines
in a pipe or a log file)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

console = Console(stderr=True)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Say what went wrong; the exit to raise (status 2: the command's words, 1: anything else).

    The message is printed as it is: values it quotes (``cuda:x``, a path with brackets) are not
    read as rich markup or emoji codes."""
    console.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def configure_console_logging(verbose: bool) -> None:
    """Logs of the one-shot commands (``generate``, ``download``): ours always, the libraries' when verbose."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    logging.getLogger("layerdiffuse_server").setLevel(logging.INFO)


@contextlib.contextmanager
def step_reporter(total: int) -> Iterator[Callable[[int, int], None]]:
    """Denoising progress: a bar on a terminal; elsewhere (a pipe, a log file) plain lines, about ten."""
    if console.is_terminal:
        columns = (TextColumn("[bold]denoising"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("steps", total=total)
            yield lambda step, _total: progress.update(task, completed=step)
        return
    every = max(1, total // 10)
    started = time.monotonic()

    def line(step: int, steps: int) -> None:
        if step % every == 0 or step == steps:
            console.print(f"denoising step {step}/{steps} ({time.monotonic() - started:.1f} s)", highlight=False)

    yield line


@contextlib.contextmanager
def training_reporter() -> Iterator[Callable[[str, int, int, float], None]]:
    """Training progress, one stage after another: bars with the loss on a terminal, else a line
    per 5 % of each stage."""
    if console.is_terminal:
        columns = (
            TextColumn("[bold]{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=console) as progress:
            tasks: dict[str, TaskID] = {}

            def bar(stage: str, step: int, steps: int, loss: float) -> None:
                if stage not in tasks:
                    tasks[stage] = progress.add_task(stage, total=steps, loss=loss)
                progress.update(tasks[stage], completed=step, loss=loss)

            yield bar
        return
    started: dict[str, float] = {}

    def line(stage: str, step: int, steps: int, loss: float) -> None:
        started.setdefault(stage, time.monotonic())
        if step % max(1, steps // 20) == 0 or step == steps:
            elapsed = time.monotonic() - started[stage]
            console.print(f"{stage}: step {step}/{steps}, loss {loss:.4f} ({elapsed:.0f} s)", highlight=False)

    yield line
