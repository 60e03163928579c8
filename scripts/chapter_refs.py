"""Which chapter/section of the book each public function or class in common/ implements, as its docstrings say.

    .venv/bin/python scripts/chapter_refs.py            # table: name, where the reference was found, reference
    .venv/bin/python scripts/chapter_refs.py --missing  # only the names whose docstring lacks its 定义于 line

d2l's "Defined in §…": every public top-level function and class of common/ carries, in its own docstring, the line
「定义于 第N章 §x.y」 with the section of its module in MODULE_SECTIONS (the most specific section of the book's
outline, OUTLINE, that the module implements). The rule for modules without a book section: utilities (paths,
seeds, runinfo, errata, device, site, model registry, process plumbing, ...) map to None in MODULE_SECTIONS and their
objects say 「本书无对应章节（工具）」 instead. A module missing from MODULE_SECTIONS is an error, so a new module
must be placed in the map. tests/test_chapter_refs.py fails on any missing, wrong or unknown reference.

Older, free-form references ("§3.2.7", "第 5 章", "chapter 6", "ch06") are still listed by `references`.
"""
from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REF = re.compile(r"§\s?\d+(?:\.\d+)*(?:[–-]§?\d+(?:\.\d+)*)?|第\s?\d+\s?章|\b[Cc]hapter\s?\d+\b|\bch\d{2}\b")
DEFINED = re.compile(r"定义于 第(\d+)章 §(\d+(?:\.\d+)*)")
TOOL = "本书无对应章节（工具）"

# Numbered sections of the book's outline (《LLM推理优化实战》 V2+V3 table of contents, chapters 1-11).
OUTLINE = frozenset("""
1.1 1.1.1 1.1.2 1.1.3 1.2 1.2.1 1.2.2 1.2.3 1.2.4 1.3 1.3.1 1.3.2 1.3.3 1.3.4 1.4 1.4.1 1.4.2 1.4.3 1.4.4
2.1 2.1.1 2.1.2 2.1.3 2.1.4 2.1.5 2.2 2.2.1 2.2.2 2.2.3 2.3 2.3.1 2.3.2 2.3.3 2.4 2.4.1 2.4.2 2.4.3
3.1 3.1.1 3.1.2 3.1.3 3.1.4 3.2 3.2.1 3.2.2 3.2.3 3.2.4 3.2.5 3.2.6 3.2.7 3.3 3.3.1 3.3.2 3.3.3 3.3.4 3.3.5 3.3.6
3.4 3.4.1 3.4.2 3.4.3 3.4.4 3.5 3.5.1 3.5.2 3.5.3 3.6 3.6.1 3.6.2 3.6.3 3.6.4
3.7 3.7.1 3.7.2 3.7.3 3.7.4 3.7.5 3.7.6 3.7.7 3.7.8
4.1 4.2 4.3 4.4 4.5 4.6 4.7
5.1 5.2 5.3 5.3.6 5.4 5.4.6 5.5 5.6 5.7 5.8 5.9 5.10 5.11 5.11.1 5.11.2 5.11.3 5.11.4 5.11.5 5.11.6 5.11.7
6.1 6.2 6.3 6.3.1 6.3.2 6.3.3 6.3.4 6.4 6.5 6.6 6.7 6.7.1 6.7.2 6.7.3 6.7.4 6.7.5 6.7.6 6.7.7 6.7.8
7.1 7.2 7.3 7.4 7.4.1 7.4.2 7.4.3 7.4.4 7.4.5 7.4.6 7.4.7 7.5 7.6 7.7 7.7.1 7.7.2 7.7.3 7.7.4 7.7.5 7.7.6 7.7.7
8.1 8.2 8.2.1 8.2.2 8.2.3 8.2.4 8.3 8.4 8.5 8.6 8.7 8.7.1 8.7.2 8.7.3 8.7.4 8.7.5 8.7.6
8.8 8.8.1 8.8.2 8.8.3 8.8.4 8.8.5 8.8.6 8.8.7 8.9
9.1 9.2 9.3 9.4 9.5 9.6 9.7 9.7.1 9.7.2 9.7.3 9.7.4 9.7.5 9.7.6 9.7.7
10.1 10.2 10.3 10.4 10.5 10.5.4 10.5.5 10.6 10.6.5 10.6.6 10.7 10.8 10.9
10.10 10.10.1 10.10.2 10.10.3 10.10.4 10.10.5 10.10.6 10.10.7 10.10.8
11.1 11.1.7 11.2 11.3 11.4 11.5 11.6 11.7 11.8 11.8.1 11.8.2 11.8.3 11.8.4 11.8.5 11.8.6 11.8.7
""".split())

# module -> the most specific section it implements; None = a utility with no book section (says TOOL).
MODULE_SECTIONS: dict[str, str | None] = {
    "common.advanced.compiled_decode": "11.5", "common.advanced.context_builder": "11.1.7",
    "common.advanced.expert_parallel": "11.8.1", "common.advanced.flash": "11.6", "common.advanced.fused_ops": "11.7",
    "common.advanced.moe": "11.3", "common.advanced.moefy": "11.3", "common.advanced.sinks": "11.6",
    "common.advanced.triton_add_rmsnorm": "11.7", "common.advanced.triton_flash": "11.6",
    "common.basics.batching": "5.9", "common.basics.chunked_prefill": "5.7", "common.basics.token_budget": "5.10",
    "common.bench.__main__": "10.5.5", "common.bench.engines": "10.5.5", "common.bench.loadinfo": None,
    "common.bench.metrics": "10.5.5", "common.bench.offline": "10.5.5", "common.bench.prom": "10.4",
    "common.bench.serve": "10.5.5", "common.bench.serve_client": "10.5.5", "common.bench.serve_launch": "10.5.5",
    "common.bench.sglang_peer": "10.5.5", "common.bench.vllm_bench": "10.5.5", "common.bench.workload": "10.5.5",
    "common.cpp_extension": None,
    "common.demo": None, "common.device": None, "common.disagg.runs": "7.7.7", "common.disagg.transfer": "7.7.4",
    "common.disagg.workers": "7.7.4", "common.doctor": "2.4.2", "common.engine.config": "7.6",
    "common.engine.kv_stores": "7.6", "common.engine.llm": "7.3", "common.engine.overlap": "7.4.4",
    "common.engine.runner": "5.10", "common.engine.sampler": "5.2", "common.engine.sampling_params": "5.2",
    "common.engine.scheduler": "7.4.3", "common.engine.sequence": "7.4.1", "common.engine.stats": "7.3",
    "common.engine.stop": "7.4.1", "common.errata": None, "common.hardware.batch_sweep": "3.2.4",
    "common.hardware.cost": "10.6", "common.hardware.gpu_specs": "3.7.8", "common.hardware.machine": "3.2.4",
    "common.hardware.memory_calc": "3.3", "common.hardware.monitor": "3.4.3", "common.hardware.occupancy": "3.2.7",
    "common.hardware.peak_memory": "3.3", "common.hardware.roofline": "3.2.4", "common.model.attention": "5.3",
    "common.model.cpu_ops": "11.7", "common.model.packed_gemm": "11.7", "common.model.cpu_layer": "11.7",
    "common.model.fused": "11.7", "common.model.generate": "5.2", "common.model.kv_cache": "5.4",
    "common.model.kv_math": "6.4", "common.model.layers": "6.1", "common.model.llama": "6.1",
    "common.model.model_shapes": "3.3", "common.models": None, "common.models.__main__": None,
    "common.models.convert": None, "common.models.registry": None, "common.paged.block_allocator": "6.3.2",
    "common.paged.block_hash": "6.7.3", "common.paged.block_manager": "6.3.2", "common.paged.block_ops": "6.3.2",
    "common.paged.decode_attention": "6.3.2",
    "common.paged.kv_store": "6.3.2", "common.paged.paged_attention": "6.3.2",
    "common.paged.paged_attention_triton": "6.3.2", "common.paged.paged_cache": "6.3.2",
    "common.paged.prefix_cache": "6.7.3", "common.paged.radix_cache": "6.3.4", "common.paged.traces": "6.7.2",
    "common.paths": None, "common.peers.llama_cpp": "8.4", "common.peers.llm_compressor": "8.6",
    "common.peers.process": None, "common.peers.sglang_args": "9.7.3", "common.peers.sglang_offline_child": "6.3.4",
    "common.peers.sglang_radix": "6.3.4", "common.peers.sglang_server": "6.3.4",
    "common.peers.vllm_kv_connector": "7.7.4", "common.peers.vllm_runner": "4.3", "common.peers.vllm_server": "4.3",
    "common.quant.alignment": "8.8", "common.quant.awq": "8.2.1", "common.quant.calibration": "8.2.1",
    "common.quant.eval": "8.6", "common.quant.fake_quant": "8.7.1", "common.quant.gguf_q4_1": "8.4",
    "common.quant.gptq": "8.2.1", "common.quant.int4pack": "8.3", "common.quant.kv_int8": "8.5",
    "common.quant.kv_int8_paged": "8.5", "common.quant.nf4": "8.2.3", "common.quant.packing": "8.3",
    "common.quant.qlinear": "8.3", "common.quant.recipes": "8.6", "common.quant.rtn": "8.2.1",
    "common.quant.smoothquant": "8.2.1", "common.router.__main__": "10.2", "common.router.app": "10.2",
    "common.router.chaos": "10.9", "common.router.errors": "10.9", "common.router.experiment": "10.2",
    "common.router.health": "10.9", "common.router.policies": "7.4.6", "common.runinfo": None, "common.seeds": None,
    "common.serve.__main__": "10.2", "common.serve.app": "10.2", "common.serve.async_engine": "10.2",
    "common.serve.detokenize": "10.2", "common.serve.engine_core": "10.2", "common.serve.engine_loop": "10.2",
    "common.serve.guards": "10.8", "common.serve.launch": "10.2", "common.serve.logprobs": "10.2",
    "common.serve.metrics": "10.4", "common.serve.protocol": "10.2", "common.serve.reliability": "10.9",
    "common.serve.responses": "10.2", "common.serve.sse": "10.2", "common.serve.validation": "10.8",
    "common.sim.cache_hits": "6.7.5", "common.sim.reservation": "7.4.7", "common.sim.token_budget": "5.10",
    "common.site": None, "common.site_check": None, "common.spec.decode": "9.2", "common.spec.drafters": "9.4",
    "common.spec.medusa": "9.3", "common.spec.theory": "9.5", "common.spec.verify": "9.2",
    "common.triton_kernels._checks": None, "common.triton_kernels.rmsnorm": "3.2.7",
    "common.triton_kernels.softmax": "3.2.7", "common.triton_kernels.vector_add": "3.2.7",
    "common.vllm_plugin": "5.11.7", "common.vllm_plugin.banned_tokens": "5.11.7",
    "common.vllm_plugin.scheduler": "5.11.7", "common.vllm_plugin.scratch_llama": "5.11.7",
}


def defined_line(section: str | None) -> str:
    """The line a docstring of a module mapped to `section` must carry (d2l's "Defined in §")."""
    return TOOL if section is None else f"定义于 第{section.split('.')[0]}章 §{section}"


def references(text: str | None) -> list[str]:
    """Distinct section/chapter references in `text`, in order of appearance."""
    seen: list[str] = []
    for match in REF.findall(text or ""):
        ref = re.sub(r"\s+", " ", match)
        if ref not in seen:
            seen.append(ref)
    return seen


def module_name(path: Path) -> str:
    """Dotted module name of a file under REPO (a package's __init__ is the package)."""
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def public_nodes(tree: ast.Module) -> list[ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef]:
    """Public top-level functions and classes: the objects that carry a 定义于 line."""
    return [node for node in tree.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and not node.name.startswith("_")]


def public_objects(path: Path) -> list[tuple[str, str, list[str], list[str]]]:
    """(qualified name, kind, own references, module references) of each public top-level def/class."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module_name(path)
    module_refs = references(ast.get_docstring(tree))
    rows = []
    for node in public_nodes(tree):
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        rows.append((f"{module}.{node.name}", kind, references(ast.get_docstring(node)), module_refs))
    return rows


def problems(path: Path, sections: dict[str, str | None] | None = None) -> list[str]:
    """What is wrong with the 定义于 lines of one file: missing, not its module's section, or not in OUTLINE."""
    sections = MODULE_SECTIONS if sections is None else sections
    tree = ast.parse(path.read_text(encoding="utf-8"))
    module = module_name(path)
    nodes = public_nodes(tree)
    if nodes and module not in sections:
        return [f"{module}: not in MODULE_SECTIONS (add its section, or None for a utility)"]
    out = []
    for node in nodes:
        doc = ast.get_docstring(node) or ""
        found = DEFINED.findall(doc)
        expected = defined_line(sections.get(module))
        for chapter, section in found:
            if section not in OUTLINE or section.split(".")[0] != chapter:
                out.append(f"{module}.{node.name}: 第{chapter}章 §{section} is not a section of the outline")
        if expected not in doc.splitlines():
            out.append(f"{module}.{node.name}: docstring lacks the line 「{expected}」")
    return out


def source_files(root: Path | None = None) -> list[Path]:
    """Every .py file of common/ (caches excluded)."""
    root = (REPO / "common") if root is None else root
    return [p for p in sorted(root.rglob("*.py")) if "__pycache__" not in p.parts]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/chapter_refs.py")
    parser.add_argument("--missing", action="store_true", help="only the problems (missing or wrong 定义于 lines)")
    args = parser.parse_args(argv)
    if args.missing:
        found = [p for path in source_files() for p in problems(path)]
        print("\n".join(found) or "every public function and class names its section")
        return 1 if found else 0
    rows = [row for path in source_files() for row in public_objects(path)]
    counts = {"own": 0, "module": 0, "missing": 0}
    for name, kind, own, module_refs in rows:
        source = "own" if own else "module" if module_refs else "missing"
        counts[source] += 1
        refs = ", ".join(own or module_refs) or "-"
        print(f"{name:60s} {kind:8s} {source:7s} {refs}")
    print(f"\n{len(rows)} public functions/classes in common/: {counts['own']} name a section in their own docstring, "
          f"{counts['module']} only through their module's docstring, {counts['missing']} missing", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
