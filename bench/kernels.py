"""The one-thread micro-measurements behind part 4's choices, each an A/B in one process (medians).

- decode chunk: the importance sampler at k=1000 with 512 against 4,096 codes per decoder call;
- fold layer: the decoder's 32 -> 1 transposed convolution, oneDNN against FoldConvTranspose2d (batch 128,
  channels-last), forward and forward + backward;
- in-place ReLU against out-of-place on a 512 x 32 x 14 x 14 channels-last tensor;
- reduced precision: a 1024 x 1024 torch.mm in float32, bfloat16 and float16;
- torch.compile (inductor, freezing) of the default decoder against eager, batch 512 (skip: --no-compile).

    python bench/kernels.py            # about 2 minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from vaelab import load_config
from vaelab.evaluation.likelihood import importance_sampled
from vaelab.models import build_model
from vaelab.models.conv import FoldConvTranspose2d
from _results import provenance, write_result  # bench/ is on sys.path when run as a script


def median_ms(fn, repeats: int = 21) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--out", default="bench/results/kernels.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out: dict = {**provenance("bench/kernels.py", argv), "threads": 1}
    model = build_model(load_config().model, (1, 28, 28)).eval()
    x = (torch.rand(16, 1, 28, 28) < 0.3).to(torch.uint8) * 255
    chunk = {c: [] for c in (4096, 512)}
    for _ in range(3):  # alternating rounds
        for c in chunk:
            t0 = time.perf_counter()
            importance_sampled(model, x, k=1000, max_decode=c)
            chunk[c].append(len(x) / (time.perf_counter() - t0))
    out["nll_images_per_s_by_decode_chunk"] = {c: statistics.median(v) for c, v in chunk.items()}

    cl = torch.channels_last
    ref = torch.nn.ConvTranspose2d(32, 1, 4, 2, 1).to(memory_format=cl)
    fold = FoldConvTranspose2d(32, 1, 4, 2, 1)
    fold.load_state_dict(ref.state_dict())
    h = torch.randn(128, 32, 14, 14).contiguous(memory_format=cl).requires_grad_()

    def fwd_bwd(layer):
        return lambda: layer(h).sum().backward()

    with torch.no_grad():
        out["convT_32to1_forward_ms"] = {"onednn": median_ms(lambda: ref(h)), "fold": median_ms(lambda: fold(h))}
    out["convT_32to1_forward_backward_ms"] = {"onednn": median_ms(fwd_bwd(ref)), "fold": median_ms(fwd_bwd(fold))}

    a = torch.randn(512, 32, 14, 14).contiguous(memory_format=cl)
    out["relu_ms"] = {"out_of_place": median_ms(lambda: torch.relu(a)), "in_place": median_ms(lambda: a.relu_())}

    out["mm_1024_gflops"] = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        m1, m2 = torch.randn(1024, 1024, dtype=dtype), torch.randn(1024, 1024, dtype=dtype)
        out["mm_1024_gflops"][str(dtype)] = 2 * 1024 ** 3 / median_ms(lambda: torch.mm(m1, m2), 5) / 1e6

    if not args.no_compile:
        import torch._inductor.config as inductor_config

        dec = build_model(load_config().model, (1, 28, 28)).eval().decoder
        z = torch.randn(512, dec.net[0].in_features)
        with torch.no_grad():
            eager = median_ms(lambda: dec(z))
            inductor_config.freezing = True
            compiled = torch.compile(dec)
            compiled(z)
            out["decoder_decodes_per_s"] = {"eager": 512e3 / eager, "compiled": 512e3 / median_ms(lambda: compiled(z))}

    print(json.dumps(out, indent=2))
    write_result(args.out, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
