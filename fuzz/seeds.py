#!/usr/bin/env python3
"""Writes the committed seed corpora of the fuzz targets into fuzz/seeds/<target>/ (fuzz/corpus/ is cargo-fuzz's default working corpus, git-ignored).

Run from anywhere: `python3 fuzz/seeds.py`. The byte formats are those of
fuzz/src/lib.rs (`Reader`) and of each target's doc comment. Seeds whose
name starts with `valid` must succeed (checked by `cargo test --manifest-path
fuzz/Cargo.toml` for config_json and checkpoint_load).
"""
import json
import os
import random
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "seeds")


def write(target, name, data):
    d = os.path.join(ROOT, target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- config_json --------------------------------------------------------------------
def hf_config(**over):
    c = {
        "architectures": ["MixtralForCausalLM"],
        "model_type": "mixtral",
        "vocab_size": 8,
        "hidden_size": 4,
        "intermediate_size": 4,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 2,
        "num_local_experts": 2,
        "num_experts_per_tok": 1,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "max_position_embeddings": 8,
        "tie_word_embeddings": False,
        "router_aux_loss_coef": 0.01,
        "torch_dtype": "float32",
        "hidden_act": "silu",
        "sliding_window": None,
        "moe_rs": {"format_version": 1, "rope_base": 10000.0, "rope_alpha": 1.0},
    }
    c.update(over)
    return json.dumps(c, indent=2)


write("config_json", "valid_ckpt.json", hf_config())
# NTK alpha 8, d 16: rope_theta = 10000 * 8^(16/14).
write("config_json", "valid_ntk.json", hf_config(
    head_dim=16, hidden_size=64, rope_theta=10000.0 * 8 ** (16 / 14),
    moe_rs={"format_version": 1, "rope_base": 10000.0, "rope_alpha": 8.0}))
hf = json.loads(hf_config())
del hf["moe_rs"], hf["rope_theta"], hf["torch_dtype"], hf["head_dim"]
hf["rope_parameters"] = {"rope_theta": 10000.0, "rope_type": "default"}
hf["dtype"] = "float32"
write("config_json", "valid_hf5.json", json.dumps(hf))
write("config_json", "bad_kv.json", hf_config(num_attention_heads=3, num_key_value_heads=2))
write("config_json", "bad_truncated.json", hf_config()[:120])

# ---- checkpoint_load (CKPT_CONFIG: v8 c4 L1 h2 kv1 d2 f4 e2 k1) ---------------------
def layout():
    v, c, h, kv, d, f, e = 8, 4, 2, 1, 2, 4, 2
    t = [("model.embed_tokens.weight", [v, c])]
    p = "model.layers.0."
    t += [(p + "input_layernorm.weight", [c]),
          (p + "self_attn.q_proj.weight", [h * d, c]),
          (p + "self_attn.k_proj.weight", [kv * d, c]),
          (p + "self_attn.v_proj.weight", [kv * d, c]),
          (p + "self_attn.o_proj.weight", [c, h * d]),
          (p + "post_attention_layernorm.weight", [c]),
          (p + "block_sparse_moe.gate.weight", [e, c])]
    for j in range(e):
        q = p + f"block_sparse_moe.experts.{j}."
        t += [(q + "w1.weight", [f, c]), (q + "w3.weight", [f, c]), (q + "w2.weight", [c, f])]
    t += [("model.norm.weight", [c]), ("lm_head.weight", [v, c])]
    return t


def safetensors(tensors, meta=None):
    header, data, off = {}, b"", 0
    if meta is not None:
        header["__metadata__"] = meta
    for name, shape, values in tensors:
        raw = struct.pack(f"<{len(values)}f", *values)
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(raw)]}
        data += raw
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


rng = random.Random(42)
tensors = []
for name, shape in layout():
    n = 1
    for s in shape:
        n *= s
    vals = [1.0] * n if len(shape) == 1 else [rng.uniform(-0.5, 0.5) for _ in range(n)]
    tensors.append((name, shape, vals))
valid = safetensors(tensors, {"format": "pt"})
write("checkpoint_load", "valid_model.safetensors", valid)
write("checkpoint_load", "bad_truncated.safetensors", valid[: len(valid) - 37])
bad = list(tensors)
bad[3] = (bad[3][0], [4, 2], bad[3][2])  # k_proj with a transposed shape
write("checkpoint_load", "bad_shape.safetensors", safetensors(bad))
nan = list(tensors)
nan[-2] = (nan[-2][0], nan[-2][1], [1.0, float("nan"), 1.0, 1.0])
write("checkpoint_load", "bad_nan.safetensors", safetensors(nan))
write("checkpoint_load", "bad_garbage.safetensors", struct.pack("<Q", 16) + b'{"a":{"dtype":}}')

# ---- forward_tokens: mode, b, t, [alpha: m + u32], ids (m, u16) ----------------------
def ids(xs, vocab=32):
    out = b""
    for x in xs:
        if x < vocab:
            out += bytes([0]) + struct.pack("<H", x)
        else:
            out += bytes([230]) + struct.pack("<H", x - vocab)
    return out


def nice(value_1024ths):  # Reader::param with an odd mode byte: u32 % 4096 / 1024
    return bytes([1]) + struct.pack("<I", value_1024ths)


write("forward_tokens", "valid_infer_b2t4", bytes([0, 2, 4]) + ids(range(8)))
write("forward_tokens", "valid_train_b1t5", bytes([1, 1, 5]) + nice(10) + ids([3, 1, 4, 1, 5, 9, 2, 6, 5, 3]))
write("forward_tokens", "bad_id", bytes([0, 1, 3]) + ids([1, 40, 2]))
write("forward_tokens", "bad_plan_t20", bytes([0, 1, 20]) + ids(range(20)))
write("forward_tokens", "bad_alpha_nan", bytes([1, 1, 2]) + bytes([0]) + struct.pack("<f", float("nan")) + ids([1, 2, 3, 4]))

# ---- sampling: strategy, seed u64, logits mode, logits --------------------------------
seed = struct.pack("<Q", 12345)
i8 = bytes([4, 10, 10, 250, 128, 127, 0, 3])
write("sampling", "greedy_i8", bytes([0]) + seed + bytes([1]) + i8)
write("sampling", "topk3_i8", bytes([2]) + struct.pack("<H", 3) + nice(1024) + seed + bytes([1]) + i8)
write("sampling", "topp_raw_nan", bytes([3]) + nice(900) + nice(512) + seed + bytes([0])
      + struct.pack("<4f", 1.0, 2.0, float("nan"), 3.0))
write("sampling", "temp_huge", bytes([1]) + bytes([0]) + struct.pack("<f", 1e-30) + seed + bytes([2]) + i8)

# ---- generate: strategy, seed u64, max_len, prompt ids --------------------------------
write("generate", "valid_greedy", bytes([0]) + seed + bytes([12]) + ids([1, 2, 3]))
write("generate", "valid_topp", bytes([3]) + nice(922) + nice(1024) + seed + bytes([20]) + ids([5, 6, 7, 8]))
write("generate", "bad_prompt_id", bytes([1]) + nice(800) + seed + bytes([10]) + ids([1, 99, 3]))
write("generate", "bad_too_long", bytes([0]) + seed + bytes([30]) + ids([1]))

# ---- train_resume: optimizer.safetensors next to a step-1 model of run "fuzz-run" ----
def optimizer(meta_over=None, m_fn=None, v_fn=None):
    meta = {"format": "moe-rs/adamw", "format_version": "1", "step": "1", "run_id": "fuzz-run",
            "beta1": "0.9", "beta2": "0.999", "eps": "0.00000001", "weight_decay": "0.01"}
    for k, v in (meta_over or {}).items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    r = random.Random(7)
    ts = []
    for prefix, fn in (("m.", m_fn), ("v.", v_fn)):
        for name, shape in layout():
            n = 1
            for s in shape:
                n *= s
            vals = [r.uniform(-1e-3, 1e-3) if prefix == "m." else r.uniform(0, 1e-6) for _ in range(n)]
            if fn is not None:
                vals = fn(name, vals)
            ts.append((prefix + name, shape, vals))
    return safetensors(ts, meta)


write("train_resume", "valid_optimizer.safetensors", optimizer())
write("train_resume", "bad_step_2p53_plus_1.safetensors", optimizer({"step": str(2 ** 53 + 1)}))
write("train_resume", "bad_step_u64_max.safetensors", optimizer({"step": str(2 ** 64 - 1)}))
write("train_resume", "bad_step_other_save.safetensors", optimizer({"step": "2"}))
write("train_resume", "bad_step_text.safetensors", optimizer({"step": "-1"}))
write("train_resume", "bad_run_id_other.safetensors", optimizer({"run_id": "another-run"}))
write("train_resume", "bad_run_id_missing.safetensors", optimizer({"run_id": None}))
write("train_resume", "bad_format.safetensors", optimizer({"format": "pt"}))
write("train_resume", "bad_v_negative.safetensors",
      optimizer(v_fn=lambda n, xs: [-1.0] + xs[1:] if n == "model.norm.weight" else xs))
write("train_resume", "bad_m_nan.safetensors",
      optimizer(m_fn=lambda n, xs: [float("nan")] + xs[1:] if n == "lm_head.weight" else xs))
write("train_resume", "valid_huge_moments.safetensors",
      optimizer(m_fn=lambda n, xs: [3e38] * len(xs), v_fn=lambda n, xs: [1e-38] * len(xs)))

# ---- report_json --------------------------------------------------------------------
# Result files with each quirk the report must handle (benchmarks/peers/README.md):
# KiB peak RSS, Go's alloc total over trials, placeholders, params that differ from
# the spec, a duplicate id (bad), parent-only parallel CPU, foreign ids and nulls.
def scenario(sid, params, median, **over):
    s = {
        "id": sid, "axis": "memory", "params": params, "trial_runs": 10,
        "timings_ns": [median] * 10, "median_ns": median, "cpu_median_ns": median,
        "memory": {"peak_rss_bytes": 30000000, "alloc_bytes": 1000},
        "gc": {"total_gc_time_ns": 0, "gc_pause_count": 0},
        "numerical": {"nan_count": 0, "inf_count": 0, "max_abs": 2.5},
        "derived": {"alloc_rate_bytes_per_sec": 1000 / (median * 1e-9), "gc_throughput": 1.0},
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(s.get(k), dict):
            s[k].update(v)
        else:
            s[k] = v
    return s


def result(meta, scenarios):
    return json.dumps({"metadata": meta, "scenarios": scenarios}, indent=1)


B2S32 = {"batch": 2, "seq_len": 32, "hidden_dim": 64}
write("report_json", "valid_python_kib.json", result({"language": "python"}, [
    scenario("dispatch_warm", B2S32, 3600000, memory={"peak_rss_bytes": 51064},
             gc={"total_gc_time_ns": 0, "gc_pause_count": 1}, numerical={"max_abs": 0.0}),
    scenario("parallel_T2", dict(B2S32, thread_count=2), 4000000, cpu_median_ns=650000,
             memory={"alloc_bytes": None}, derived={"alloc_rate_bytes_per_sec": None, "gc_throughput": None}),
]))
write("report_json", "valid_go_total.json", result({"language": "go", "n_trials": 10}, [
    scenario("mem_train_step", {"batch": 2, "seq_len": 8, "hidden_dim": 64}, 8000000,
             memory={"alloc_bytes": 25000000},
             derived={"alloc_rate_bytes_per_sec": 25000000 / (10 * 8e-3), "gc_throughput": 0.9975},
             gc={"total_gc_time_ns": 200000, "gc_pause_count": 2}),
    scenario("kernel_matmul", {"M": 64, "K": 64, "N": 64}, 9000, throughput_tokens_per_sec=0),
]))
write("report_json", "valid_params_batch64.json", result({"language": "rust"}, [
    scenario("mem_scale_batch_8", {"batch": 64, "seq_len": 32, "hidden_dim": 64}, 10000000),
    scenario("dispatch_warm", {"batch": 2, "seq_len": 32, "hidden_dim": 128}, 10000000),
    scenario("only_here", None, 5),
]))
write("report_json", "valid_moe_rs_heap.json", result(
    {"language": "rust", "schema_version": 1, "isolation": "process", "matmul_kernel": "avx2+fma 6x16"}, [
    scenario("dispatch_warm", B2S32, 900000, memory={"alloc_bytes": 0}, derived={"alloc_rate_bytes_per_sec": 0.0}),
    scenario("dispatch_warm_heap", dict(B2S32, alloc_policy="heap-per-step"), 1600000,
             memory={"alloc_bytes": 858000, "alloc_count": 24}),
]))
write("report_json", "bad_duplicate_id.json", result({"language": "go"}, [
    scenario("dispatch_warm", B2S32, 1), scenario("dispatch_warm", B2S32, 2)]))
write("report_json", "bad_no_scenarios.json", json.dumps({"metadata": {}}))
write("report_json", "bad_truncated.json", result({"language": "go"}, [scenario("dispatch_warm", B2S32, 1)])[:120])
