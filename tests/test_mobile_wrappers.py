"""The phone wrappers checked by their own tools, without the phone SDKs.

ArkTS (HarmonyOS): harmonyos/ets/*.ets type-check against the NAPI module's Index.d.ts with
OpenHarmony's TypeScript fork (npm ohos-typescript: strict tsc + the ArkTS 1.1 linter), as
DevEco's ets-loader would. Swift (iOS): tree-sitter-swift parses the wrapper without errors and
mobile_bridge/python/swift_abi_check.py checks every C name it uses against minicpmv_edge.h
(functions with the same arity, struct fields, callback closures). Each check also runs on a
deliberately broken copy, which it must reject: a checker that passes everything proves nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BRIDGE = ROOT / "mobile_bridge"
sys.path.insert(0, str(BRIDGE / "python"))
import mcv_bridge  # noqa: E402
import swift_abi_check  # noqa: E402

ETS = BRIDGE / "harmonyos" / "ets"
SWIFT = BRIDGE / "ios" / "Sources" / "MiniCPMVEdge" / "MiniCPMVEdge.swift"


def _arkts(ets_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(BRIDGE / "harmonyos/test/arkts_check.js"), str(mcv_bridge.ohos_typescript()),
                           str(ets_dir)], capture_output=True, text=True, timeout=300)


def test_arkts_wrapper_type_checks_against_napi_dts():
    r = _arkts(ETS)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 .ets file(s) (scriptKind 8), 0 tsc + 0 linter diagnostic(s)" in r.stdout, r.stdout


def test_arkts_check_rejects_a_broken_wrapper(tmp_path):
    for f in ETS.iterdir():
        shutil.copy(f, tmp_path / f.name)
    ets = tmp_path / "MiniCpmvEngine.ets"
    src = ets.read_text()
    assert "bridge.endTurn(this.h());" in src
    # a NAPI function the .d.ts lacks, a wrong argument type, and ArkTS-forbidden `any`
    ets.write_text(src.replace("bridge.endTurn(this.h());",
                               "bridge.endTurnNow(this.h()); bridge.addText(this.h(), 'user', 1); let v: any = 0;"))
    r = _arkts(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Property 'endTurnNow' does not exist" in r.stdout, r.stdout
    assert "not assignable to parameter of type 'number'" in r.stdout, r.stdout
    assert "arkts-no-any-unknown" in r.stdout, r.stdout
    # and a .d.ts that lost a function the wrapper calls
    dts = tmp_path / "Index.d.ts"
    ets.write_text(src)
    dts.write_text("\n".join(l for l in dts.read_text().splitlines() if "export const prefillVideoFrame" not in l
                             and not l.startswith("  stride: number) => Promise<number>;")))
    r = _arkts(tmp_path)
    assert r.returncode == 1 and "'prefillVideoFrame' does not exist" in r.stdout, r.stdout


def test_swift_wrapper_parses_and_matches_the_header():
    api = swift_abi_check.parse_header()
    called = {"mcv_session_prefill_text", "mcv_session_prefill_image", "mcv_session_prefill_image_rgb",
              "mcv_session_prefill_video_frame", "mcv_session_image_cost", "mcv_session_set_encoder"}
    assert called <= set(api.functions)
    assert api.functions["mcv_session_prefill_image_rgb"] == 6 and api.functions["mcv_version"] == 0
    assert api.callbacks["mcv_encode_fn"] == 5 and {"max_slices", "max_pixels"} <= api.structs["mcv_image_params"]
    assert swift_abi_check.check_swift(SWIFT, api) == []
    src = SWIFT.read_text()
    assert all(f"{name}(" in src for name in called)  # the wrapper exposes the 0.3 calls
    r = subprocess.run([sys.executable, str(BRIDGE / "python/swift_abi_check.py")], capture_output=True, text=True)
    assert r.returncode == 0 and "0 problem(s)" in r.stdout, r.stdout + r.stderr


def test_swift_check_rejects_a_broken_wrapper(tmp_path):
    api = swift_abi_check.parse_header()
    src = SWIFT.read_text()
    mutations = {
        "mcv_session_reset(s)": ("mcv_session_reset(s, 0)", "mcv_session_reset takes 1 argument(s)"),
        "mcv_session_end_turn(s)": ("mcv_session_close_turn(s)", "mcv_session_close_turn is not declared"),
        "p.max_slices = budget.maxSlices": ("p.max_slice = budget.maxSlices", "mcv_image_params has no field max_slice"),
        "{ user, info, _, out, n in": ("{ user, info, out, n in", "a mcv_encode_fn closure takes 5 parameter(s), this one 4"),
        "MCV_ERR_INTERNAL.rawValue": ("MCV_ERR_INTERNALS.rawValue", "MCV_ERR_INTERNALS is not declared"),
        "public func endTurn() throws {": ("public func endTurn() throws { let x = (", "Swift syntax error"),
    }
    for old, (new, want) in mutations.items():
        assert src.count(old) == 1, old
        f = tmp_path / "Broken.swift"
        f.write_text(src.replace(old, new))
        problems = swift_abi_check.check_swift(f, api)
        assert any(want in p for p in problems), (old, problems)
