"""The work of the paper experiment, shared by the htex runner and the bare baseline.

A LLaMa-2-7B-shaped model (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32000) with
random fp16 weights created directly on the GPU: nothing is downloaded, and building it takes
seconds rather than the minutes of loading a checkpoint. One "completion" is a greedy generation
of exactly NEW_TOKENS tokens after a fixed PROMPT_TOKENS-token prompt (random token ids). Weights
and prompt come from fixed seeds, so every process does the same work.

Only torch and transformers are needed; both are imported when a model is built, so importing
this module is cheap (and works on a machine without them).
"""

import os
import time

CONFIG = dict(
    hidden_size=4096,
    intermediate_size=11008,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=4096,
)
PROMPT_TOKENS = 40
NEW_TOKENS = 24
WEIGHT_SEED = 1234
PROMPT_SEED = 4321


def now_us():
    """Wall clock in µs since the epoch (the unit of htex's timings)."""
    return time.time_ns() // 1000


def process_start_us():
    """When this process was started (µs since the epoch), from /proc; None where unknown."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return int((btime + start_ticks / os.sysconf("SC_CLK_TCK")) * 1e6)
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class Llama:
    """The model and its prompt on this process's GPU (device 0 of what it may see)."""

    def __init__(self):
        t0 = time.perf_counter()
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM

        self.torch = torch
        self.import_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        torch.manual_seed(WEIGHT_SEED)
        config = LlamaConfig(**CONFIG)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float16)
        try:
            with torch.device("cuda"):
                self.model = LlamaForCausalLM(config).eval()
        finally:
            torch.set_default_dtype(previous)
        self.model.requires_grad_(False)
        generator = torch.Generator().manual_seed(PROMPT_SEED)
        prompt = torch.randint(0, config.vocab_size, (1, PROMPT_TOKENS), generator=generator)
        self.input_ids = prompt.to("cuda")
        self.attention_mask = torch.ones_like(self.input_ids)
        # No EOS/pad handling is wanted (min_new_tokens keeps EOS out); naming the pad id silences
        # the "Setting pad_token_id" warning of every call.
        self.pad_token_id = config.eos_token_id
        torch.cuda.synchronize()
        self.build_s = time.perf_counter() - t1
        props = torch.cuda.get_device_properties(0)
        self.sm_count = props.multi_processor_count
        self.device_name = props.name
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.memory_bytes = torch.cuda.memory_allocated()

    def generate(self):
        """One completion: NEW_TOKENS new tokens, greedy. Returns how many were generated."""
        torch = self.torch
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=self.input_ids,
                attention_mask=self.attention_mask,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=self.pad_token_id,
            )
        torch.cuda.synchronize()
        return int(out.shape[1] - self.input_ids.shape[1])

    def reported_facts(self):
        """The facts each instance reports with its cold start (htex runner and bare alike)."""
        facts = self.facts()
        return {key: facts[key] for key in REPORTED}

    def facts(self):
        """What this process got: SMs, MPS percentage, build times, memory."""
        return {
            "sm_count": self.sm_count,
            "mps_percentage": _int_env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
            "device": self.device_name,
            "import_s": round(self.import_s, 3),
            "build_s": round(self.build_s, 3),
            "parameters": self.parameters,
            "memory_bytes": self.memory_bytes,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "mps_pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"),
            "cpus": sorted(os.sched_getaffinity(0)),
            "torch_threads": self.torch.get_num_threads(),
        }


REPORTED = ("sm_count", "mps_percentage", "import_s", "build_s", "memory_bytes", "cpus", "torch_threads")


def _int_env(name):
    try:
        return int(os.environ[name])
    except (KeyError, ValueError):
        return None
