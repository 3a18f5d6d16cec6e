"""Spec parsing and loading (runtime.specs) and a user's policy as a planner
(runtime.userpolicy): each form parses, each failure is one line naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hw_bridge import motor_spec
from runtime import Observation
from runtime.specs import SpecError, load_object, parse_kv, parse_spec
from runtime.userpolicy import CallablePolicy, PolicyError, planner_from_object
from tests.byo import userstuff

SPEC = motor_spec()


def test_plant_args_are_json_literals_else_text() -> None:
    kw = parse_kv(["rate=50", "gain=0.5", "on=true", "ids=[1,2]", "port=/dev/ttyUSB0",
                   "episode-ticks=9", 'name="x y"'])
    assert kw == {"rate": 50, "gain": 0.5, "on": True, "ids": [1, 2], "port": "/dev/ttyUSB0",
                  "episode_ticks": 9, "name": "x y"}


@pytest.mark.parametrize(("items", "needle"), [
    (["rate"], "expected KEY=VALUE"),
    (["=3"], "expected KEY=VALUE"),
    (["9x=1"], "expected KEY=VALUE"),
    (["a=1", "a=2"], "a given twice"),
])
def test_bad_plant_args_are_one_line(items: list[str], needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as err:
        parse_kv(items)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(("text", "scheme", "target"), [
    ("sim:double-pendulum", "sim", "double-pendulum"),
    ("mjcf:robots/arm.xml", "mjcf", "robots/arm.xml"),
    ("gym:InvertedPendulum-v5", "gym", "InvertedPendulum-v5"),
    ("py:my_robot.driver:Arm", "py", "my_robot.driver:Arm"),
    ("py:./robot.py:make", "py", "./robot.py:make"),
    ("tcp://127.0.0.1:5555", "tcp", "tcp://127.0.0.1:5555"),
    ("ipc:///tmp/plant", "ipc", "ipc:///tmp/plant"),
])
def test_every_plant_spec_form_parses(text: str, scheme: str, target: str) -> None:
    spec = parse_spec(text)
    assert (spec.scheme, spec.target, str(spec)) == (scheme, target, text)


@pytest.mark.parametrize(("text", "needle"), [
    ("", "is empty"),
    ("double-pendulum", "expected one of sim:TASK"),
    ("ros:arm", "expected one of sim:TASK"),
    ("sim:", "nothing after sim:"),
    ("mjcf:arm.urdf", "an MJCF model is a .xml file"),
    ("py:module_only", "expected py:MODULE:ATTR"),
    ("py:pkg.mod:not-an-attr", "is not an attribute name"),
    ("py:bad module:X", "neither a module name nor a .py file"),
])
def test_bad_plant_specs_are_one_line(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as err:
        parse_spec(text)
    assert "\n" not in str(err.value)


def test_a_policy_spec_is_py_or_a_name() -> None:
    assert parse_spec("expert", what="policy").scheme == ""
    assert parse_spec("rolling:double-pendulum", what="policy").target == "rolling:double-pendulum"
    assert parse_spec("py:a.b:c", what="policy").scheme == "py"
    with pytest.raises(SpecError, match="an endpoint is a plant"):
        parse_spec("tcp://h:1", what="policy")
    with pytest.raises(SpecError, match="does not apply to a remote plant"):
        parse_spec("tcp://h:1", {"x": 1})


def test_load_object_from_a_module_and_from_a_file(tmp_path: Path) -> None:
    assert load_object(parse_spec("py:tests.byo.userstuff:pd")) is userstuff.pd
    assert load_object(parse_spec("py:tests.byo.userstuff:Buggy.__call__")) is (
        userstuff.Buggy.__call__)
    f = tmp_path / "mine.py"
    f.write_text("import numpy as np\ndef policy(state):\n    return np.ones(1)\n")
    fn = load_object(parse_spec(f"py:{f}:policy"))
    assert fn(np.zeros(2)).tolist() == [1.0]


@pytest.mark.parametrize(("text", "needle"), [
    ("py:no_such_module_xyz:f", "no module 'no_such_module_xyz'"),
    ("py:tests.byo.userstuff:nope", "has no attribute 'nope'"),
    ("py:/nonexistent/dir/x.py:f", "no file /nonexistent/dir/x.py"),
])
def test_load_failures_are_one_line(text: str, needle: str) -> None:
    with pytest.raises(SpecError, match=needle) as err:
        load_object(parse_spec(text))
    assert "\n" not in str(err.value)


def test_a_file_that_raises_on_import_is_one_line(tmp_path: Path) -> None:
    f = tmp_path / "broken.py"
    f.write_text("raise RuntimeError('no hardware\\nhere')\n")
    with pytest.raises(SpecError, match="raised RuntimeError: no hardware here"):
        load_object(parse_spec(f"py:{f}:x"))


def _obs(state: list[float], k: int = 0) -> Observation:
    return Observation(seq=k, t_ns=k, state=np.array(state))


def test_a_callable_policy_is_called_once_per_tick_with_its_args() -> None:
    p = CallablePolicy(userstuff.pd, SPEC, kwargs={"kp": 3.0})
    p.reset(_obs([0.0, 0.0]))
    assert p.action().tolist() == [1.0]  # clipped by the policy itself
    p.observe(_obs([0.9, 0.0], 1))
    assert p.refine(10**6) == 1 and p.refine(10**6) == 0
    assert p.action() == pytest.approx([0.3])
    assert p.counters()["calls"] == 2


@pytest.mark.parametrize(("how", "counter", "needle"), [
    ("raise", "errors", "raised ZeroDivisionError: bad luck at tick 2"),
    ("nan", "nonfinite", "returned a non-finite action"),
    ("shape", "bad_shape", r"returned shape \(3,\), expected \(1,\)"),
])
def test_a_failing_callable_stops_lockstep_and_falls_back_in_realtime(
    how: str, counter: str, needle: str
) -> None:
    strict = CallablePolicy(userstuff.Buggy(every=3, how=how), SPEC, strict=True, name="b")
    strict.reset(_obs([0.0, 0.0]))
    strict.observe(_obs([0.0, 0.0], 1))
    strict.refine(10**6)
    strict.observe(_obs([0.0, 0.0], 2))
    with pytest.raises(PolicyError, match=needle):
        strict.refine(10**6)
    lax = CallablePolicy(userstuff.Buggy(every=3, how=how), SPEC, strict=False, name="b")
    lax.reset(_obs([0.0, 0.0]))
    for k in range(1, 9):
        lax.observe(_obs([0.0, 0.0], k))
        lax.refine(10**6)
        failed = (k + 1) % 3 == 0
        assert np.isnan(lax.action()).all() == failed  # NaN: the loop sends its fallback
    assert lax.counters()[counter] == 3 and lax.first_error.endswith("at tick 2")


def test_planner_from_object_takes_planners_factories_and_callables() -> None:
    ready = CallablePolicy(userstuff.pd, SPEC)
    assert planner_from_object(ready, SPEC) is ready
    made = planner_from_object(userstuff.make_pd, SPEC, kwargs={"kp": 0.5})
    made.reset(_obs([0.0, 0.0]))
    assert made.action().tolist() == [0.5]
    goal = planner_from_object(userstuff.pd_with_goal, SPEC)
    assert isinstance(goal, CallablePolicy)
    with pytest.raises(SpecError, match="ready planner"):
        planner_from_object(ready, SPEC, kwargs={"kp": 1})
    with pytest.raises(SpecError, match="neither a planner"):
        planner_from_object(42, SPEC)
    with pytest.raises(SpecError, match="takes \\(state\\) or \\(state, goal\\)"):
        planner_from_object(lambda a, b, c: a, SPEC)
    with pytest.raises(SpecError, match="raised TypeError"):
        planner_from_object(userstuff.make_pd, SPEC, kwargs={"nope": 1})
