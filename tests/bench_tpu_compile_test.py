"""nnd.bench.tpu_compile: cases, the resumable sweep, the table, and one real TPU compile."""

import json

import pytest

from nnd import aot, defaults
from nnd.bench import tpu_compile


def test_cases_parse_and_mistakes_are_named():
    case = tpu_compile.parse_case("v5litepod-8:bfloat16:scan")
    assert case == ("v5litepod-8", "bfloat16", "scan") and case.name == "v5litepod-8:bfloat16:scan"
    assert tpu_compile.parse_case("v5e:2x4:float32:unrolled")[0] == "v5e:2x4"
    with pytest.raises(ValueError, match="expected TOPOLOGY:DTYPE:LAYOUT"):
        tpu_compile.parse_case("v4-8:float16:scan")
    with pytest.raises(aot.TopologyError, match="unknown TPU topology"):
        tpu_compile.parse_case("v3-8:float32:scan")


def _result(case, seconds):
    step = {"compile_seconds": seconds, "argument_bytes": 2**20, "temp_bytes": 3 * 2**20,
            "total_bytes": 5 * 2**20, "fits": True, "flops": 2.05e13,
            "xla_flops_per_device_loops_once": 1.9e12, "xla_bytes_accessed_loops_once": 4.5e10,
            "xla_optimal_seconds": 0.0123}
    return {"case": case, "libtpu_topology": "v5e:2x4", "train_step": step}


def test_the_sweep_writes_each_case_and_a_rerun_skips_it(tmp_path, monkeypatch, capsys):
    compiled = []

    def fake_compile(config, case):
        compiled.append(case.name)
        return _result(case.name, 100.0 + len(compiled))

    monkeypatch.setattr(tpu_compile, "compile_case", fake_compile)
    out = tmp_path / "sweep.json"
    args = ["--config", "configs/digits_gaussian.py", "--out", str(out),
            "--case", "v5litepod-8:float32:unrolled", "--case", "v5litepod-8:float32:scan"]
    assert tpu_compile.main(args) == 0
    assert [r["case"] for r in json.loads(out.read_text())["results"]] == [
        "v5litepod-8:float32:unrolled", "v5litepod-8:float32:scan"]
    assert tpu_compile.main(args + ["--case", "v6e-8:bfloat16:scan",
                                    "--markdown", str(tmp_path / "t.md")]) == 0
    assert compiled == ["v5litepod-8:float32:unrolled", "v5litepod-8:float32:scan",
                        "v6e-8:bfloat16:scan"]
    table = (tmp_path / "t.md").read_text().splitlines()
    assert len(table) == 5 and "| v5litepod-8 (`v5e:2x4`) | float32 | scan | 102 | 1 / 3 / 5 |" in table[3]
    assert table[3].endswith("| 2.05e+13 | 1.9e+12 | 4.5e+10 | 12.3 ms |")
    other = tpu_compile.main(["--config", "configs/mnist_gaussian.py", "--out", str(out),
                              "--case", "v4-8:float32:scan"])
    assert other == 2 and "holds cases of configs/digits_gaussian.py" in capsys.readouterr().err


def test_a_bad_case_is_one_line(capsys):
    assert tpu_compile.main(["--config", "configs/digits_gaussian.py", "--out", "x.json",
                             "--case", "v4-8:float32:rolled"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("nnd: --case 'v4-8:float32:rolled'")


@pytest.mark.slow  # a TPU compile (libtpu, which CI installs)
def test_scan_and_unrolled_compile_for_a_slice():
    pytest.importorskip("libtpu")
    config = defaults.image("digits", "gaussian")
    config.model.num_blocks = 1
    results = {layout: tpu_compile.compile_case(config, tpu_compile.parse_case(f"v5e:2x2:float32:{layout}"))
               for layout in ("unrolled", "scan")}
    for r in results.values():
        step = r["train_step"]
        assert step["fits"] and step["compile_seconds"] > 0 and step["flops"] > 0
        assert step["xla_bytes_accessed_loops_once"] > 0 and r["num_chips"] == 4
    # The same network either way: the jaxpr FLOP (scan bodies times their length) agree.
    assert results["scan"]["train_step"]["flops"] == pytest.approx(
        results["unrolled"]["train_step"]["flops"], rel=0.05)
