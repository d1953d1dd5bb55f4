"""A compiled module's kernels are written to the cache folder by the first process and read back
by the next one, as a restarted worker would: two fresh interpreters, real ``torch.compile``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from layerdiffuse_server.engine.pipelines.compiling import CompileCounts, configure_compiling, recompile_limit

#: One process's run: compile a small convolution stack through compiling.py, run it on one size,
#: print the counts and the largest difference to the same module run eagerly.
CHILD = """
import json, sys
from pathlib import Path
import torch
import torch._dynamo  # as the pipeline does before compiling: it writes torch's default folder into the variable
from layerdiffuse_server.engine.pipelines.compiling import CompileCounts, compile_module, configure_compiling

folder = configure_compiling(Path(sys.argv[1]), recompile_limit=4)
torch.manual_seed(0)
model = torch.nn.Sequential(
    torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.GroupNorm(2, 8), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 3, padding=1)
).eval()
sample = torch.randn(1, 4, 16, 16)
before = CompileCounts.now()
with torch.no_grad():
    compiled = compile_module(model)(sample)
    eager = model(sample)
counts = CompileCounts.now() - before
print(json.dumps({"folder": str(folder), "difference": (compiled - eager).abs().max().item(), **counts.__dict__}))
"""


def compile_in_a_new_process(cache: Path) -> dict[str, float]:
    env = {name: value for name, value in os.environ.items() if name != "TORCHINDUCTOR_CACHE_DIR"}
    # One compile worker: the pool of subprocesses costs more than it saves for one small graph.
    env |= {"TORCHINDUCTOR_COMPILE_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(cache)], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_a_second_process_reads_the_compiled_graph_from_the_cache_folder(tmp_path: Path) -> None:
    cache = tmp_path / "compile-cache"
    first = compile_in_a_new_process(cache)
    assert first["folder"] == str(cache.resolve())
    assert first["graphs"] >= 1 and first["cache_misses"] >= 1 and first["cache_hits"] == 0, first
    assert first["difference"] <= 1e-5
    assert any(cache.iterdir())
    second = compile_in_a_new_process(cache)
    assert second["graphs"] >= 1 and second["cache_hits"] >= 1 and second["cache_misses"] == 0, second
    assert second["difference"] <= 1e-5


def test_the_recompile_limit_is_dynamos_and_the_operators_cache_variable_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch._dynamo.config, "recompile_limit", recompile_limit())
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "theirs"))
    assert configure_compiling(tmp_path / "ours", recompile_limit=3) == tmp_path / "theirs"
    assert torch._dynamo.config.recompile_limit == 3 == recompile_limit()
    assert not (tmp_path / "ours").exists()
    with pytest.raises(ValueError, match="at least 1"):
        configure_compiling(tmp_path, recompile_limit=0)


def test_counts_are_differences_of_readings() -> None:
    later = CompileCounts(graphs=3, cache_hits=2, cache_misses=1)
    assert later - CompileCounts(graphs=1, cache_hits=1) == CompileCounts(graphs=2, cache_hits=1, cache_misses=1)
    assert (later - CompileCounts()).describe() == "3 graphs: 2 from the cache, 1 compiled"
