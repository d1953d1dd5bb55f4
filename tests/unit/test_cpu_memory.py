"""The engine keeps freed CPU memory for reuse, unless whoever started the process chose otherwise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from layerdiffuse_server.cpu_memory import allocator_chosen_by_user, running_on_glibc

#: Three decoder estimates at 256²; prints the page faults of the last (the others warm up).
WARM_ESTIMATE_FAULTS = """
import resource, torch
from layerdiffuse_server.engine.networks.decoder import TransparentDecoder
from layerdiffuse_server.engine.networks.decoder_network import TransparentDecoderNetwork
torch.set_num_threads(1)
torch.manual_seed(0)
network = TransparentDecoderNetwork(
    block_out_channels=(4, 8, 8, 16, 16, 32, 32), attention_levels=(False,) * 5 + (True,) * 2, layers_per_block=1
)
decoder = TransparentDecoder(network, passes=8, max_batch=1)
pixels, latent = torch.rand(1, 3, 256, 256), torch.randn(1, 4, 32, 32)
decoder.estimate(pixels, latent)
decoder.estimate(pixels, latent)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
decoder.estimate(pixels, latent)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.parametrize(
    ("environ", "chosen"),
    [
        ({}, False),
        ({"PATH": "/usr/bin", "MALLOC": "not glibc's"}, False),
        ({"MALLOC_ARENA_MAX": "2"}, False),  # glibc's variables end in "_"
        ({"MALLOC_ARENA_MAX_": "2"}, True),
        ({"MALLOC_PERTURB_": "0"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, True),
        ({"GLIBC_TUNABLES": "glibc.rtld.optional_static_tls=512"}, False),
        ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, True),
        ({"LD_PRELOAD": "/usr/lib/libtcmalloc_minimal.so.4"}, True),
    ],
)
def test_a_user_s_allocator_settings_are_recognised(environ: dict[str, str], chosen: bool) -> None:
    assert allocator_chosen_by_user(environ) is chosen


@pytest.mark.skipif(not running_on_glibc(), reason="the settings are glibc's")
def test_the_decoder_reuses_memory_unless_the_user_chose_glibc_s_defaults() -> None:
    """With freed memory kept, a warm decoder estimate maps no new pages; with glibc's defaults
    (asked for here by one of its own variables) each pass maps and zeroes its activations again."""
    faults = {}
    for label, extra in (("kept", {}), ("glibc", {"MALLOC_PERTURB_": "0"})):
        env = {name: value for name, value in os.environ.items() if not name.startswith("MALLOC_")} | extra
        env.pop("GLIBC_TUNABLES", None)
        env.pop("LD_PRELOAD", None)
        done = subprocess.run(
            [sys.executable, "-c", WARM_ESTIMATE_FAULTS], env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        faults[label] = int(done.stdout.split()[-1])
    assert faults["glibc"] > 5 * max(faults["kept"], 1000), faults
