"""The filter at scale: exact top-K users against approximate FAISS indexes on a million users.

    python benchmarks/faiss_scale.py --dims 64            # one dimension per run keeps each run short
    python benchmarks/faiss_scale.py --dims 200
    python benchmarks/faiss_scale.py --plot-only          # redraw faiss.png and faiss.md from the JSON

The filter keeps, for every new item, the K users with the highest inner product
(``coldllm.funnel.filter.top_users``). Exact search reads every user for every item: at a million
users and tens of thousands of items a day that is the part of the filter that grows. This script
measures, on the same synthetic users and items, the exact index (IndexFlatIP) and approximate
ones: IVF-Flat, HNSW, and the compressed IVF-SQ8 and IVF-PQ that a catalogue too large for RAM
would need. Per index: build seconds (training + adding), bytes of the serialised index, query
seconds over the same queries as the exact search, and recall of the exact top-K.

The users are synthetic, shaped like the filter's real coupled user vectors rather than isotropic
noise (isotropic noise in 64 or 200 dimensions has no neighbours worth finding and makes every
index look bad): a mixture of clustered topics of unequal size, a spectrum that decays (a few
directions carry most of the variance), a direction shared by all users, and norms that vary
from user to user (the filter ranks by inner product unless ``filter.normalize_users``). The
statistics of both are written side by side when a served run's filter vectors are at hand
(``--calibrate-from``). Items are drawn from the same topics.

Each dimension merges its entries into ``results/scale/faiss.json`` (with commit, date, machine,
faiss version and the SIMD level faiss dispatched to); ``--simd`` also times a few indexes at each
SIMD level this faiss build carries, to show what its AVX2 and AVX-512 kernels are worth here.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

from coldllm.utils import git_commit, now_iso, write_json

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "results" / "scale" / "faiss.json"


def synthetic_vectors(n: int, dim: int, topics: "Topics", rng: np.random.Generator, norm_spread: float) -> np.ndarray:
    """``n`` vectors from the topic mixture, built in blocks so 1M x 200 needs no float64 copy."""
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):
        m = min(100_000, n - start)
        topic = rng.choice(len(topics.centres), m, p=topics.share)
        z = topics.centres[topic] + topics.spread * rng.standard_normal((m, dim), dtype=np.float32)
        x = (z * topics.scale) @ topics.rotation + topics.mean
        # a user's norm grows with how much the towers know of them; log-normal, as measured
        x *= rng.lognormal(0.0, norm_spread, (m, 1)).astype(np.float32)
        out[start : start + m] = x
    return out


class Topics:
    """The shared structure of users and items: topic centres, spectrum, common direction."""

    def __init__(self, dim: int, n_topics: int, rng: np.random.Generator, decay: float = 1.0,
                 spread: float = 0.5, mean_ratio: float = 0.75):
        # topic sizes follow a Zipf law: a few large fields, a long tail of small ones
        share = 1.0 / np.arange(1, n_topics + 1) ** 0.8
        self.share = share / share.sum()
        self.centres = rng.standard_normal((n_topics, dim), dtype=np.float32)
        self.spread = np.float32(spread)
        # variance decays as 1/i^decay; the rotation spreads it over every coordinate, as in a
        # trained embedding (PQ splits coordinates into blocks; axis-aligned variance would be unfair to it)
        self.scale = (np.arange(1, dim + 1) ** (-decay / 2)).astype(np.float32)
        self.rotation = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        energy = float(np.sum(self.scale**2) * (1 + spread**2))
        direction = rng.standard_normal(dim).astype(np.float32)
        self.mean = (mean_ratio * np.sqrt(energy) * direction / np.linalg.norm(direction)).astype(np.float32)


def shape_stats(vectors: np.ndarray, sample: int = 20_000) -> dict:
    """What the synthetic data is calibrated on: norm spread, effective dimension, shared direction."""
    x = vectors[np.random.default_rng(0).choice(len(vectors), min(sample, len(vectors)), replace=False)].astype(np.float64)
    norms = np.linalg.norm(x, axis=1)
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    share = s / s.sum()
    mean_dir = x.mean(0) / np.linalg.norm(x.mean(0))
    return {"dim": int(x.shape[1]), "norm_cv": round(float(norms.std() / norms.mean()), 3),
            "effective_dim": round(float(1 / np.sum(share**2)), 1),
            "top10_variance_share": round(float(share[:10].sum()), 3),
            "mean_cosine_to_mean_direction": round(float((x @ mean_dir / norms).mean()), 3)}


def calibration(path: Path) -> dict | None:
    if not path.exists():
        return None
    from safetensors.numpy import load_file

    return {"source": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            **shape_stats(load_file(path)["users"])}


def index_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def timed_search(index, queries: np.ndarray, k: int, one_at_a_time: bool = False,
                 repeat: int = 2) -> tuple[float, np.ndarray]:
    """Seconds of the fastest of ``repeat`` searches: the machine is shared, and the minimum is
    the figure least disturbed by other work."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        if one_at_a_time:  # the online service's case: one new item per request
            ids = np.concatenate([index.search(queries[i : i + 1], k)[1] for i in range(len(queries))])
        else:
            ids = index.search(queries, k)[1]
        best = min(best, time.perf_counter() - start)
    return best, ids


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact top-K that the index returns, averaged over queries."""
    k = exact.shape[1]
    return float(np.mean([len(np.intersect1d(f[f >= 0], e)) / k for f, e in zip(found, exact)]))


def family_builders(dim: int) -> dict:
    """Each family: its build settings, a builder, and the search-time settings swept on one build.

    A ``-l2`` family searches the users after the reduction of maximum inner product to nearest
    neighbour (Bachrach et al., 2014): every user gains a coordinate sqrt(R^2 - |u|^2), R the
    largest user norm, every item a 0, so the smallest L2 distance is the largest inner product.
    Graph and cluster indexes assume a metric; raw inner product over users of unequal norms is
    not one, and the reduction gives them one without changing the ranking.
    """
    import faiss

    ip, l2 = faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2

    def quantizer(d, metric):
        return faiss.IndexFlatIP(d) if metric == ip else faiss.IndexFlatL2(d)

    def ivf(nlist: int, metric=ip):
        def build(d):
            index = faiss.IndexIVFFlat(quantizer(d, metric), d, nlist, metric)
            # 64 training points per list (faiss's floor is 39): the k-means stays minutes, not hours
            index.cp.max_points_per_centroid = 64
            return index
        return build

    def ivf_sq8(nlist: int, metric=ip):
        def build(d):
            index = faiss.IndexIVFScalarQuantizer(quantizer(d, metric), d, nlist, faiss.ScalarQuantizer.QT_8bit, metric)
            index.cp.max_points_per_centroid = 64
            return index
        return build

    def ivf_pq(nlist: int, m: int, metric=ip):
        def build(d):
            index = faiss.IndexIVFPQ(quantizer(d, metric), d, nlist, m, 8, metric)
            index.cp.max_points_per_centroid = 64
            return index
        return build

    def hnsw(m: int, ef_construction: int, metric=ip):
        def build(d):
            index = faiss.IndexHNSWFlat(d, m, metric)
            index.hnsw.efConstruction = ef_construction
            return index
        return build

    def set_nprobe(index, value):
        index.nprobe = value

    def set_ef(index, value):
        index.hnsw.efSearch = value

    pq_m = dim // 4  # 4 dimensions per byte: 16 bytes a user at 64-d, 50 at 200-d
    ef = (16, 32, 64, 128, 256, 512)
    l2_hnsw = {"kind": "hnsw", "reduction": "mips-to-l2", "efConstruction": 40}
    return {
        "ivf1024": ({"kind": "ivf", "nlist": 1024}, ivf(1024), "nprobe", (4, 8, 16, 32, 64), set_nprobe),
        "ivf4096": ({"kind": "ivf", "nlist": 4096}, ivf(4096), "nprobe", (8, 16, 32, 64, 128), set_nprobe),
        "hnsw16": ({"kind": "hnsw", "M": 16, "efConstruction": 40}, hnsw(16, 40), "efSearch", ef[:5], set_ef),
        "hnsw32": ({"kind": "hnsw", "M": 32, "efConstruction": 40}, hnsw(32, 40), "efSearch", ef, set_ef),
        "ivf1024-l2": ({"kind": "ivf", "reduction": "mips-to-l2", "nlist": 1024}, ivf(1024, l2), "nprobe",
                       (8, 16, 32, 64, 128), set_nprobe),
        "hnsw16-l2": ({**l2_hnsw, "M": 16}, hnsw(16, 40, l2), "efSearch", ef, set_ef),
        "hnsw32-l2": ({**l2_hnsw, "M": 32}, hnsw(32, 40, l2), "efSearch", ef, set_ef),
        "ivf1024-sq8": ({"kind": "ivf-sq8", "nlist": 1024}, ivf_sq8(1024), "nprobe", (8, 16, 32, 64), set_nprobe),
        "ivf1024-l2-sq8": ({"kind": "ivf-sq8", "reduction": "mips-to-l2", "pad_to": 16, "nlist": 1024}, ivf_sq8(1024, l2),
                           "nprobe", (16, 32, 64), set_nprobe),
        "ivf1024-pq": ({"kind": "ivf-pq", "nlist": 1024, "pq_m": pq_m, "pq_bits": 8}, ivf_pq(1024, pq_m),
                       "nprobe", (8, 16, 32, 64), set_nprobe),
    }


def mips_to_l2(users: np.ndarray, items: np.ndarray, multiple: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Users and items with the extra coordinate of the inner-product-to-L2 reduction, padded with
    zeros to a multiple of ``multiple`` dimensions (the scalar quantiser's SIMD loops need one)."""
    sq = np.einsum("ij,ij->i", users, users)
    extra = np.sqrt(np.maximum(sq.max() - sq, 0.0)).astype(np.float32)
    pad = -(users.shape[1] + 1) % multiple
    return (np.hstack([users, extra[:, None], np.zeros((len(users), pad), np.float32)]),
            np.hstack([items, np.zeros((len(items), 1 + pad), np.float32)]))


def run_dim(dim: int, args, rng: np.random.Generator) -> dict:
    import faiss

    topics = Topics(dim, args.topics, rng)
    t0 = time.perf_counter()
    users = synthetic_vectors(args.users, dim, topics, rng, args.norm_spread)
    items = synthetic_vectors(args.queries, dim, topics, rng, args.norm_spread)
    print(f"[{dim}-d] {args.users} users generated in {time.perf_counter() - t0:.1f} s", flush=True)
    if args.normalize_users:
        users /= np.linalg.norm(users, axis=1, keepdims=True)

    start = time.perf_counter()
    flat = faiss.IndexFlatIP(dim)
    flat.add(users)
    flat_build = time.perf_counter() - start
    exact_seconds, exact = timed_search(flat, items, args.k)
    entries = [{"name": "flat", "dim": dim, "settings": {"kind": "flat"}, "recall": 1.0, "speedup": 1.0,
                "build_seconds": round(flat_build, 2), "memory_mb": round(index_bytes(flat) / 2**20, 1),
                "query_seconds": round(exact_seconds, 3), "ms_per_query": round(1e3 * exact_seconds / len(items), 4)}]
    print(f"[{dim}-d] exact: {exact_seconds:.1f} s for {len(items)} queries", flush=True)
    out = {"dim": dim, "data": shape_stats(users), "entries": entries, "skipped": {}}
    indexes = {"flat": (flat, items)}  # each index with the queries it answers

    for family, (settings, make, knob, values, set_knob) in family_builders(dim).items():
        if args.families and family not in args.families:
            continue
        reduced = "reduction" in settings
        start = time.perf_counter()
        x, q = mips_to_l2(users, items, settings.get("pad_to", 1)) if reduced else (users, items)
        if family.startswith("hnsw") and not hnsw_fits(family, make, x, args, out, settings):
            continue
        index = make(x.shape[1])
        index.train(x)
        index.add(x)
        build = time.perf_counter() - start  # the reduction's extra coordinate is part of building
        size = index_bytes(index) / 2**20
        print(f"[{dim}-d] {family}: built in {build:.1f} s, {size:.0f} MB", flush=True)
        for value in values:
            set_knob(index, value)
            seconds, found = timed_search(index, q, args.k)
            entry = {"name": f"{family}/{knob}={value}", "dim": dim, "settings": {**settings, knob: value},
                     "recall": round(recall(found, exact), 4), "speedup": round(exact_seconds / seconds, 2),
                     "build_seconds": round(build, 2), "memory_mb": round(size, 1),
                     "query_seconds": round(seconds, 3), "ms_per_query": round(1e3 * seconds / len(items), 4),
                     "exact_ms_per_query": entries[0]["ms_per_query"]}
            entries.append(entry)
            print(f"[{dim}-d]   {entry['name']}: recall {entry['recall']:.3f}, {entry['speedup']:.1f}x", flush=True)
        if args.simd:  # kept for the SIMD timings; otherwise freed before the next family is built
            indexes[family] = (index, q)
        del index, x, q
    if args.simd:
        stamp = {"commit": git_commit(ROOT), "date": now_iso()}
        out["simd"] = [{**row, **stamp} for row in simd_levels(indexes, exact, args)]
    return out


def hnsw_fits(family: str, make, users: np.ndarray, args, out: dict, settings: dict) -> bool:
    """HNSW's build is the slow one on two cores: time it on a sample and extrapolate first.

    Its insertion cost grows roughly as n log n, so the projection scales the sample's time by
    (N log N) / (n log n); a family whose projection exceeds ``--max-build-seconds`` is skipped
    and the projection recorded instead of a measurement.
    """
    n = min(args.hnsw_probe, len(users))
    index = make(users.shape[1])
    start = time.perf_counter()
    index.add(users[:n])
    sample = time.perf_counter() - start
    projected = sample * (len(users) * np.log(len(users))) / (n * np.log(n))
    print(f"[{users.shape[1]}-d] {family}: {n} users in {sample:.1f} s, {len(users)} projected at {projected:.0f} s", flush=True)
    if projected > args.max_build_seconds:
        out["skipped"][family] = {"settings": settings, "probe_users": n, "probe_build_seconds": round(sample, 2),
                                  "projected_build_seconds": round(projected), "limit_seconds": args.max_build_seconds}
        return False
    return True


def simd_levels(indexes: dict, exact: np.ndarray, args) -> list[dict]:
    """The same searches at each SIMD level the build carries (generic, AVX2, AVX-512...).

    Batched exact search is a BLAS matrix product, whose kernels faiss does not dispatch; the
    one-query-at-a-time exact search (the service's case) runs faiss's own distance loops and does.
    """
    import faiss

    chosen = {"flat (one query at a time)": ("flat", None, True), "hnsw32/efSearch=128": ("hnsw32", 128, False),
              "hnsw32-l2/efSearch=128": ("hnsw32-l2", 128, False),
              "ivf1024-sq8/nprobe=32": ("ivf1024-sq8", 32, False),
              "ivf1024-pq/nprobe=32": ("ivf1024-pq", 32, False)}
    original, threads = faiss.SIMDConfig.get_level(), faiss.omp_get_max_threads()
    # one thread: the kernels' own speed, without waiting on a second thread of a busy machine
    faiss.omp_set_num_threads(1)
    rows = []
    for level in ("NONE", "AVX2", "AVX512", "AVX512_VPOPCNT"):
        value = getattr(faiss, f"SIMDLevel_{level}")
        if not faiss.SIMDConfig.is_simd_level_available(value):
            continue
        faiss.SIMDConfig.set_level(value)
        for label, (family, knob, single) in chosen.items():
            if family not in indexes:
                continue
            index, queries = indexes[family]
            queries = queries[: args.simd_queries]
            if knob is not None:
                if family.startswith("hnsw"):
                    index.hnsw.efSearch = knob
                else:
                    index.nprobe = knob
            count = min(len(queries), args.simd_single_queries) if single else len(queries)
            seconds, found = timed_search(index, queries[:count], args.k, one_at_a_time=single)
            rows.append({"level": faiss.SIMDConfig.get_level_name(), "index": label, "queries": count, "threads": 1,
                         "ms_per_query": round(1e3 * seconds / count, 4),
                         "recall": round(recall(found, exact[:count]), 4)})
            print(f"SIMD {rows[-1]}", flush=True)
    faiss.SIMDConfig.set_level(original)
    faiss.omp_set_num_threads(threads)
    return rows


def machine() -> dict:
    import faiss

    cpu = platform.processor() or "cpu"
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": cpu, "cpu_flags": sorted(f for f in flags if f.startswith(("avx", "fma", "f16c"))),
            "cores": os.cpu_count(), "faiss_threads": faiss.omp_get_max_threads(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}


def faiss_build() -> dict:
    """What faiss loaded: its compile options and the SIMD level its dynamic dispatch picked."""
    import faiss

    info = {"version": faiss.__version__, "compile_options": faiss.get_compile_options().strip(),
            "module": Path(faiss.__file__).parent.name}
    simd = getattr(faiss, "SIMDConfig", None)
    if simd is not None:
        info["dynamic_dispatch"] = bool(simd.has_dynamic_dispatch())
        info["dispatched_level"] = simd.get_level_name()
        info["available_levels"] = [name for name in ("NONE", "AVX2", "AVX512", "AVX512_VPOPCNT", "AVX512_SPR")
                                    if simd.is_simd_level_available(getattr(faiss, f"SIMDLevel_{name}"))]
        legacy = [p.name for p in Path(faiss.__file__).parent.glob("swigfaiss_avx*")]
        if info["dynamic_dispatch"] and not legacy:
            # the loader still looks for the per-instruction-set modules of older wheels first
            info["loader_note"] = ("the loader's 'Could not load library with AVX2 support' means only that no "
                                   "separate swigfaiss_avx2 module exists: this build carries its AVX2 and AVX-512 "
                                   f"kernels in one library and dispatched to {info['dispatched_level']}")
    return info


def local_faiss_wheels(folders: list[str]) -> list[str]:
    """faiss wheels the offline package indexes hold: is there another build to try?"""
    import re

    found = set()
    for folder in map(Path, folders):
        if folder.is_dir():
            for path in folder.rglob("*"):
                if path.is_file() and "faiss" in str(path.relative_to(folder)).lower():
                    text = path.read_text(errors="ignore") if path.suffix == ".html" else path.name
                    found.update(re.findall(r"faiss[_-][\w.+-]+?\.whl", text, re.I))
    return sorted(found)


def recommend(entries: list[dict], min_recall: float, min_speedup: float) -> dict | None:
    """The fastest index at the recall goal, and whether it also meets the speed goal."""
    ok = [e for e in entries if e["recall"] >= min_recall and e["name"] != "flat"]
    if not ok:
        return None
    best = max(ok, key=lambda e: e["speedup"])
    smallest = min(ok, key=lambda e: (e["memory_mb"], -e["speedup"]))
    return {"fastest": best["name"], "fastest_settings": best["settings"], "recall": best["recall"],
            "speedup": best["speedup"], "meets_goal": best["speedup"] >= min_speedup,
            "smallest": smallest["name"], "smallest_memory_mb": smallest["memory_mb"],
            "smallest_recall": smallest["recall"], "smallest_speedup": smallest["speedup"]}


def merge(old: dict | None, new: dict) -> dict:
    """A run may measure only some families (``--families``): it replaces their entries and keeps
    the others. Each entry's speedup is against the exact search of the run that measured it."""
    stamp = lambda entries, block: [{**e, "commit": e.get("commit", block["commit"]),  # noqa: E731
                                     "date": e.get("date", block["date"])} for e in entries]
    if old is None:
        return {**new, "entries": stamp(new["entries"], new)}
    fresh = {e["name"] for e in new["entries"]}
    kept = [e for e in stamp(old["entries"], old) if e["name"] not in fresh]
    merged = {**old, **new, "entries": stamp(new["entries"], new) + kept}
    merged["skipped"] = {k: v for k, v in {**old.get("skipped", {}), **new["skipped"]}.items()
                         if not any(e["name"].startswith(k + "/") for e in merged["entries"])}
    if "simd" not in new:  # kept from an older run only where each row says which run measured it
        kept_simd = old.get("simd", [])
        merged.pop("simd", None)
        if kept_simd and all("commit" in r for r in kept_simd):
            merged["simd"] = kept_simd
    merged["recommended"] = recommend(merged["entries"], 0.95, 10.0)
    return merged


def file_stamp(report: dict) -> dict:
    """The file's commit and date: those of its newest entry (each entry keeps its own)."""
    entries = [e for block in report["dims"].values() for e in block["entries"]]
    newest = max(entries, key=lambda e: e["date"])
    return {"commit": newest["commit"], "date": newest["date"]}


def summary(report: dict) -> str:
    """The markdown summary: per dimension, each family's fastest setting at the recall goal (or
    its most accurate one when none reaches it), then what the SIMD levels are worth."""
    goal = report["goal"]["recall"]
    lines = []
    for dim in sorted(report["dims"], key=int):
        block = report["dims"][dim]
        families: dict[str, list[dict]] = {}
        for e in block["entries"]:
            families.setdefault(e["name"].split("/")[0], []).append(e)
        lines += [f"**{block['config']['users']:,} users, {dim}-d**, {block['config']['queries']:,} new items, "
                  f"top-{block['config']['k']} (faiss {block['faiss']['version']}, {block['machine']['faiss_threads']} "
                  f"threads, {block['machine']['cpu']}):", "",
                  "| index | recall | speedup | ms per item | build s | memory MB |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for rows in families.values():
            ok = [e for e in rows if e["recall"] >= goal]
            e = max(ok, key=lambda e: e["speedup"]) if ok else max(rows, key=lambda e: e["recall"])
            lines.append(f"| {e['name']} | {e['recall']:.3f} | {e['speedup']:.1f}x | {e['ms_per_query']:.3g} | "
                         f"{e['build_seconds']:.0f} | {e['memory_mb']:.0f} |")
        for family, s in block.get("skipped", {}).items():
            lines.append(f"| {family} | not built: {s['probe_users']:,} users took {s['probe_build_seconds']:.0f} s, "
                         f"projected {s['projected_build_seconds']:,} s | | | | |")
        data, real = block["data"], report.get("calibration")
        lines += ["", f"Synthetic users: effective dimension {data['effective_dim']}, norm spread (CV) {data['norm_cv']}, "
                  f"mean cosine to the shared direction {data['mean_cosine_to_mean_direction']}"
                  + (f"; the filter's real coupled users ({real['dim']}-d, `{real['source']}`): {real['effective_dim']}, "
                     f"{real['norm_cv']}, {real['mean_cosine_to_mean_direction']}." if real else ".")
                  + " Each speedup is against the exact search of the run that measured it."]
        best = block.get("recommended")
        lines += ["", (f"Recommended at {dim}-d: `{best['fastest']}` ({best['recall']:.3f} recall, {best['speedup']:.1f}x); "
                       f"smallest at the recall goal: `{best['smallest']}` ({best['smallest_memory_mb']:.0f} MB)."
                       if best else f"No index reached {goal} recall at {dim}-d."), ""]
        if block.get("simd"):
            counts = sorted({r["queries"] for r in block["simd"]})
            runs = sorted({(r["commit"][:7], r["date"][:10]) for r in block["simd"]})
            lines += ["SIMD level (faiss's dynamic dispatch, forced with `faiss.SIMDConfig.set_level`), ms per item on one "
                      f"thread ({' or '.join(map(str, counts))} items; measured at "
                      + ", ".join(f"{c} on {d}" for c, d in runs) + "):", "",
                      "| index | " + " | ".join(dict.fromkeys(r["level"] for r in block["simd"])) + " |",
                      "| --- |" + " ---: |" * len(dict.fromkeys(r["level"] for r in block["simd"]))]
            by_index: dict[str, list[str]] = {}
            for r in block["simd"]:
                by_index.setdefault(r["index"], []).append(f"{r['ms_per_query']:.3g}")
            lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in by_index.items()] + [""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dims = sorted(report["dims"], key=int)
    fig, axes = plt.subplots(1, len(dims), figsize=(5.5 * len(dims), 4), squeeze=False)
    goal = report["goal"]
    for ax, dim in zip(axes[0], dims):
        block = report["dims"][dim]
        families: dict[str, list[dict]] = {}
        for e in block["entries"]:
            families.setdefault(e["name"].split("/")[0], []).append(e)
        for family, rows in families.items():
            rows = sorted(rows, key=lambda e: e["speedup"])
            ax.plot([e["speedup"] for e in rows], [e["recall"] for e in rows], marker="o", ms=4,
                    label=f"{family} ({rows[0]['memory_mb']:.0f} MB)")
        ax.axhline(goal["recall"], color="grey", lw=0.8, ls="--")
        ax.axvline(goal["speedup"], color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("speedup over exact search (queries/s ratio)")
        ax.set_ylabel(f"recall of the exact top-{block['config']['k']}")
        ax.set_title(f"{block['config']['users']:,} users, {dim}-d, {block['config']['queries']:,} items", fontsize=9)
        ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 200])
    parser.add_argument("--queries", type=int, default=2000, help="new items searched by every index (timing and recall)")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--norm-spread", type=float, default=0.13, help="sigma of the log-normal user norm factor")
    parser.add_argument("--normalize-users", action="store_true", help="as filter.normalize_users: cosine ranking")
    parser.add_argument("--families", nargs="*", default=None, help="subset of index families (default: all)")
    parser.add_argument("--hnsw-probe", type=int, default=100_000, help="users in the HNSW build-time probe")
    parser.add_argument("--max-build-seconds", type=float, default=420.0, help="skip an HNSW build projected longer")
    parser.add_argument("--simd", action="store_true", help="time a few indexes at every SIMD level")
    parser.add_argument("--simd-queries", type=int, default=1000)
    parser.add_argument("--simd-single-queries", type=int, default=50)
    parser.add_argument("--calibrate-from", default="runs/bench-citeulike-mf-coldllm-cosine/serve/filter.safetensors")
    parser.add_argument("--wheel-dirs", nargs="*", default=["/opt/wheels", "/opt/pypi/simple", "/opt/pypi-more/simple"],
                        help="offline package indexes searched for other faiss builds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--plot-only", action="store_true")
    args = parser.parse_args()
    out = Path(args.out)
    report = __import__("json").loads(out.read_text()) if out.exists() else {"dims": {}}
    if not args.plot_only:
        import faiss  # noqa: F401  (loaded before the timings: its import logs and picks kernels)

        report.update({"goal": {"recall": 0.95, "speedup": 10.0},
                       "calibration": calibration(ROOT / args.calibrate_from)})
        for dim in args.dims:
            rng = np.random.default_rng([args.seed, dim])
            block = run_dim(dim, args, rng)
            block.update({"commit": git_commit(ROOT), "date": now_iso(), "machine": machine(),
                          "faiss": {**faiss_build(), "local_wheels": local_faiss_wheels(args.wheel_dirs)}, "config": {k: v for k, v in vars(args).items()
                                                             if k not in ("out", "plot_only")},
                          "recommended": recommend(block["entries"], 0.95, 10.0)})
            report["dims"][str(dim)] = merge(report["dims"].get(str(dim)), block)
            report["config"] = {"users": args.users, "queries": args.queries, "k": args.k}
            report.update(file_stamp(report))
            write_json(out, report)  # after each dimension: a later failure keeps this one
            print(f"[{dim}-d] recommended: {report['dims'][str(dim)]['recommended']}", flush=True)
    if args.plot_only and report["dims"]:  # files written before the file-level stamp existed get it
        report.update(file_stamp(report))
        write_json(out, report)
    plot(report, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(summary(report))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
