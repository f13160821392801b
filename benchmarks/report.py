"""The benchmark's outputs: the Markdown table and the throughput / p99 plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.scenarios import Scenario


def render(report: dict[str, Any], chosen: list[Scenario]) -> str:
    lines = [
        "| scenario | limit items/s (batch) | conc | ortserve items/s | p50 ms | p95 ms | p99 ms | errors | mean batch | CPU ms/req (loop) | naive items/s | naive p50 ms | naive CPU ms/req | served/limit | served/naive | served/limit with decode |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for sc in chosen:
        entry = report["scenarios"][sc.name]
        lim = entry["limit"]
        for served, naive, ratios in zip(
            entry["served"], entry["naive"], entry["ratios"], strict=True
        ):
            s_items = served["throughput_rps"] * sc.items_per_request
            n_items = naive["throughput_rps"] * sc.items_per_request
            lines.append(
                f"| {sc.name} | {lim['items_per_s']:.0f} ({lim['best_batch']}) | {served['concurrency']} | "
                f"{s_items:.0f} | {served['p50_ms']:.1f} | {served['p95_ms']:.1f} | {served['p99_ms']:.1f} | "
                f"{sum(served['errors'].values())} | {served['mean_batch_size'] or 0:.1f} | "
                f"{served['cpu_ms_per_request']:.1f} ({served['loop_cpu_ms_per_request']:.1f}) | "
                f"{n_items:.0f} | {naive['p50_ms']:.1f} | {naive['cpu_ms_per_request']:.1f} | "
                f"{ratios['served_over_limit']['median']:.2f} | "
                f"{ratios['served_over_naive']['median']:.2f} | "
                f"{ratios['served_over_limit_with_preparation']['median']:.2f} |"
            )
        lines.append(
            f"|  | single-item model latency {lim['single_item_ms']:.2f} ms; the limit's CPU "
            f"{lim['cpu_ms_per_item']:.2f} ms/item; decode or tokenize "
            f"{lim['prepare_cpu_ms_per_item']:.2f} ms/item; the limit with decode or tokenize "
            f"beside the model {lim['with_preparation']['items_per_s']:.0f} items/s (batch "
            f"{lim['with_preparation']['best_batch']}) |  |  |  |  |  |  |  |  |  |  |  |  |  |  |"
        )
    for name, ratios in report.get("int8_over_fp32", {}).items():
        lines.append("")
        lines.append(
            f"int8 / fp32 served ({name}, median of per-round ratios): "
            + ", ".join(f"c={r['concurrency']} {r['median']:.2f}" for r in ratios)
        )
    if "memory" in report:
        m = report["memory"]
        lines.append("")
        lines.append(
            f"memory: server RSS {m['rss_loaded_mb']:.1f} MB with the models loaded, "
            f"{m['rss_after_load_mb']:.1f} MB after the load above, "
            f"{m['rss_after_first_mb']:.1f} MB after {m['requests_first']} requests, "
            f"{m['rss_after_total_mb']:.1f} MB after {m['requests_total']} "
            f"({m['growth_pct']:+.2f} %)"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    names = list(report["scenarios"])
    fig, axes = plt.subplots(2, len(names), figsize=(4 * len(names), 6), squeeze=False)
    for col, name in enumerate(names):
        entry = report["scenarios"][name]
        for kind in ("served", "naive"):
            conc = [r["concurrency"] for r in entry[kind]]
            axes[0][col].plot(
                conc, [r["throughput_rps"] for r in entry[kind]], marker="o", label=kind
            )
            axes[1][col].plot(conc, [r["p99_ms"] for r in entry[kind]], marker="o", label=kind)
        axes[0][col].set_title(name)
        axes[0][col].set_ylabel("requests/s")
        axes[1][col].set_ylabel("p99 ms")
        axes[1][col].set_xlabel("concurrency")
        axes[0][col].legend()
    fig.tight_layout()
    fig.savefig(path)
