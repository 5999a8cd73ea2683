"""GPU load for the monitoring check: holds GIB GiB of GPU memory and runs bf16 GEMMs for
SECONDS, then prints one JSON line (the slot, what it held, how many GEMMs ran)."""
import argparse
import json
import os
import time

import torch

parser = argparse.ArgumentParser()
parser.add_argument("--seconds", type=float, default=8.0)
parser.add_argument("--gib", type=float, default=1.0)
parser.add_argument("--n", type=int, default=4096)
args = parser.parse_args()

held = torch.empty(int(args.gib * (1 << 30)), dtype=torch.uint8, device="cuda")
a = torch.randn(args.n, args.n, dtype=torch.bfloat16, device="cuda")
b = torch.randn(args.n, args.n, dtype=torch.bfloat16, device="cuda")
done = 0
start = time.time()
while time.time() - start < args.seconds:
    for _ in range(8):
        a @ b
    torch.cuda.synchronize()
    done += 8
print(json.dumps({
    "slot": os.environ.get("HTEX_SLOT_INDEX"),
    "mps_percentage": os.environ.get("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
    "held_bytes": held.numel(),
    "gemms": done,
    "seconds": round(time.time() - start, 2),
}))
