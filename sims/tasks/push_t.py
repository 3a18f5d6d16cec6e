"""`push-t`: push a T-shaped block into a target pose with a disc (Diffusion Policy's Push-T).

Design (docs/tasks.md, "push-t"): a planar scene on a 0.5 m square table fenced by four walls.
The pusher is a sphere of radius 0.015 m on two slide joints, driven by velocity servos: the
action is the commanded velocity (vx, vy), m/s, within +-0.5. The T is Diffusion Policy's shape
at 1 px = 1 mm (a 0.12 x 0.03 m bar over a 0.03 x 0.09 m stem, 0.03 m tall, 0.105 kg), two box
geoms in one body on slide x, slide y and a yaw hinge whose origin is the T's centroid, so the
T's pose (x, y, yaw) is its centroid and heading (yaw 0: the bar on top, the stem pointing to
-y). Table friction acts on the T's joints: Coulomb (`frictionloss`, 0.1 N on each slide,
0.004 N m on the hinge, i.e. mu ~ 0.1) plus a little viscous damping, with gravity off. A push
at 0.2 m/s lets the T coast about 1.5 cm after contact ends, one at 0.4 m/s about 6 cm, and a
push off the centroid spins it on: what a late action did keeps acting.

State (Ds = 11): pusher x, y, vx, vy; T x, y, sin yaw, cos yaw, vx, vy, yaw rate. The yaw as
(sin, cos) is continuous where the angle wraps at +-pi; the velocities are there because the T
keeps sliding and spinning after contact, so a state without them would not say where it goes.
Goal (Dg = 4): the target pose (x, y, sin yaw, cos yaw), fixed as in Diffusion Policy: the
table's centre at yaw pi/4 (`reset(options={"goal": (x, y, yaw)})` picks another, for
analysis). Reset: T centroid uniform in [-0.12, 0.12]^2 m, yaw uniform in [-pi, pi), pusher
uniform in [-0.2, 0.2]^2 m, redrawn while the pusher would overlap the T (with 1 cm to spare)
or the T already meets the goal.

Success is Diffusion Policy's, for a T that can slide: the T covers at least 95 % of the
target T's area (`t_coverage`; `make_env("push-t", success_coverage=c)` sets another share),
which takes the centroid within about 3 mm and the yaw within about 0.04 rad of the target,
and is at rest (speed <= 0.01 m/s, yaw rate <= 0.1 rad/s: Diffusion Policy's T has no momentum,
ours could be flung through the target pose). The episode ends there (terminal "goal"), or is
truncated after 15 s; its end reports `coverage`, `pos_err_m` and `yaw_err_rad`. The reward is
minus the pose error as one length (centroid error plus yaw error times the T's radius of
gyration), cheap enough for every tick.

Disturbances (default on): pushes on the T (0.2-0.4 N for 0.1 s, 0.2 per second: it slides
1-5 cm) and sensor noise (0.5 mm on every state entry).
"""

from __future__ import annotations

from typing import Any

import mujoco
import numpy as np

from sims.disturbances import DisturbanceConfig
from sims.tasks.base import TaskEnv, TaskInfo

# --- geometry (m); the T's frame has its origin at the centroid, the bar towards +y
BAR_HALF_M = (0.06, 0.015)  # the bar: 0.12 x 0.03
STEM_HALF_M = (0.015, 0.045)  # the stem: 0.03 x 0.09, under the bar
T_HALF_HEIGHT_M = 0.015
_BAR_AREA = 4 * BAR_HALF_M[0] * BAR_HALF_M[1]
_STEM_AREA = 4 * STEM_HALF_M[0] * STEM_HALF_M[1]
T_AREA_M2 = _BAR_AREA + _STEM_AREA
# the centroid's height above the bar/stem seam, and the boxes' centres in the T's frame
_CENTROID_Y = (_BAR_AREA * BAR_HALF_M[1] - _STEM_AREA * STEM_HALF_M[1]) / T_AREA_M2
BAR_Y_M = BAR_HALF_M[1] - _CENTROID_Y
STEM_Y_M = -STEM_HALF_M[1] - _CENTROID_Y
T_MASS_KG = 0.105  # bar 0.06, stem 0.045: mass in proportion to area, so centroid = COM
PUSHER_RADIUS_M = 0.015
WALL_M = 0.25  # inner faces of the walls at +-WALL_M
T_START_M = 0.12  # T centroid drawn in [-T_START_M, T_START_M]^2
PUSHER_START_M = 0.2
GOAL_POSE = (0.0, 0.0, float(np.pi / 4))  # x, y, yaw: the table's centre at 45 degrees
SUCCESS_COVERAGE = 0.95
REST_SPEED_M_S = 0.01  # at rest: centroid speed and yaw rate at most these
REST_YAW_RATE = 0.1
# necessary for 95 % coverage, with room to spare: when the pose is further off than this the
# (costly) coverage is not computed. If a share s of the area is uncovered, the centroids are at
# most about 2 s R apart (R ~ 0.08 m, the T's reach from its centroid): 8 mm at s = 0.05.
NEAR_POS_M = 0.02
NEAR_YAW_RAD = 0.3

MJCF = f"""
<mujoco model="push-t">
  <option timestep="0.005" gravity="0 0 0" integrator="implicitfast"/>
  <default>
    <geom friction="0.4 0.005 0.0001"/>
  </default>
  <worldbody>
    <geom name="table" type="plane" size="0.3 0.3 0.01" contype="0" conaffinity="0"/>
    <geom name="wall_e" type="box" pos="{WALL_M + 0.01!r} 0 0.02" size="0.01 0.27 0.02"/>
    <geom name="wall_w" type="box" pos="{-WALL_M - 0.01!r} 0 0.02" size="0.01 0.27 0.02"/>
    <geom name="wall_n" type="box" pos="0 {WALL_M + 0.01!r} 0.02" size="0.27 0.01 0.02"/>
    <geom name="wall_s" type="box" pos="0 {-WALL_M - 0.01!r} 0.02" size="0.27 0.01 0.02"/>
    <body name="pusher" pos="0 0 {T_HALF_HEIGHT_M!r}">
      <joint name="pusher_x" type="slide" axis="1 0 0"/>
      <joint name="pusher_y" type="slide" axis="0 1 0"/>
      <geom name="pusher" type="sphere" size="{PUSHER_RADIUS_M!r}" mass="0.1"/>
    </body>
    <body name="t" pos="0 0 {T_HALF_HEIGHT_M!r}">
      <joint name="t_x" type="slide" axis="1 0 0" damping="0.05" frictionloss="0.1"/>
      <joint name="t_y" type="slide" axis="0 1 0" damping="0.05" frictionloss="0.1"/>
      <joint name="t_yaw" type="hinge" axis="0 0 1" damping="0.0001" frictionloss="0.004"/>
      <geom name="t_bar" type="box" pos="0 {BAR_Y_M!r} 0"
            size="{BAR_HALF_M[0]!r} {BAR_HALF_M[1]!r} {T_HALF_HEIGHT_M!r}" mass="0.06"/>
      <geom name="t_stem" type="box" pos="0 {STEM_Y_M!r} 0"
            size="{STEM_HALF_M[0]!r} {STEM_HALF_M[1]!r} {T_HALF_HEIGHT_M!r}" mass="0.045"/>
    </body>
  </worldbody>
  <actuator>
    <velocity name="vx" joint="pusher_x" kv="5" ctrlrange="-0.5 0.5" ctrllimited="true"/>
    <velocity name="vy" joint="pusher_y" kv="5" ctrlrange="-0.5 0.5" ctrllimited="true"/>
  </actuator>
</mujoco>
"""

INFO = TaskInfo(
    name="push-t",
    description="velocity-controlled disc pushing a T-shaped block into a target pose on a "
    "table with friction (Diffusion Policy's Push-T, planar MuJoCo, the T slides and spins)",
    rate_hz=50.0,
    episode_ticks=750,
    action_low=(-0.5, -0.5),
    action_high=(0.5, 0.5),
    state_dim=11,
    goal_dim=4,
    success_metric=f"the T at rest covering >= {SUCCESS_COVERAGE:.0%} of the target T's area "
    "within 15 s (Diffusion Policy's criterion)",
    expert="push planner: candidate pushes (contact point, direction, speed, length) scored "
    "by rollouts of the model, the best taken, reached around the T on a visibility graph",
    disturbances=DisturbanceConfig(
        push_rate_hz=0.2,
        push_force_n=(0.2, 0.4),  # 0.1 N only just beats the table's friction
        push_duration_s=0.1,
        push_axes=(0, 1),
        sensor_noise_std=0.0005,
    ),
    state_names=("pusher_x", "pusher_y", "pusher_vx", "pusher_vy", "t_x", "t_y", "t_sin",
                 "t_cos", "t_vx", "t_vy", "t_yaw_rate"),
    action_names=("vx", "vy"),
    # DART at the default 0.3 x the half-range (0.15 m/s) knocks the pusher ~3 mm off in a tick,
    # more than the last pushes' precision: with it 5 of 10 collected episodes succeeded, with
    # 0.1 (0.05 m/s, the slow push's speed) 10 of 10 (docs/tasks.md)
    dart_noise=0.1,
)


def wrap_angle(a: np.ndarray | float) -> np.ndarray:
    """Angles wrapped into [-pi, pi)."""
    return np.mod(np.asarray(a, dtype=np.float64) + np.pi, 2 * np.pi) - np.pi


def t_boxes(pose: np.ndarray | tuple[float, float, float]) -> list[np.ndarray]:
    """The T's two boxes at `pose` (x, y, yaw) as (4, 2) counter-clockwise corner arrays."""
    x, y, yaw = (float(v) for v in pose)
    c, s = np.cos(yaw), np.sin(yaw)
    rot = np.array([[c, -s], [s, c]])
    out = []
    for (hx, hy), cy in ((BAR_HALF_M, BAR_Y_M), (STEM_HALF_M, STEM_Y_M)):
        local = np.array([[-hx, cy - hy], [hx, cy - hy], [hx, cy + hy], [-hx, cy + hy]])
        out.append(local @ rot.T + np.array([x, y]))
    return out


def _clip(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman: convex polygon `subject` (n, 2) clipped by convex counter-clockwise
    polygon `clip` (m, 2); (k, 2), k = 0 when they do not overlap."""
    out = subject
    for i in range(len(clip)):
        if len(out) == 0:
            break
        a, b = clip[i], clip[(i + 1) % len(clip)]
        edge = b - a
        side = edge[0] * (out[:, 1] - a[1]) - edge[1] * (out[:, 0] - a[0])  # >= 0: inside
        kept = []
        for j in range(len(out)):
            p, q = out[j], out[(j + 1) % len(out)]
            sp, sq = side[j], side[(j + 1) % len(out)]
            if sp >= 0:
                kept.append(p)
            if (sp >= 0) != (sq >= 0):
                kept.append(p + (q - p) * (sp / (sp - sq)))
        out = np.array(kept).reshape(-1, 2)
    return out


def _area(poly: np.ndarray) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def t_coverage(pose: np.ndarray | tuple[float, float, float],
               target: np.ndarray | tuple[float, float, float]) -> float:
    """Share of the target T's area that the T at `pose` covers, in [0, 1] (Diffusion Policy's
    Push-T metric). Each T is two boxes with disjoint interiors, so the overlap is the sum of
    the four box-box overlaps."""
    inter = sum(_area(_clip(a, b)) for a in t_boxes(pose) for b in t_boxes(target))
    return float(min(1.0, inter / T_AREA_M2))


class PushTEnv(TaskEnv):
    def __init__(self, *, success_coverage: float = SUCCESS_COVERAGE, **config: Any) -> None:
        if not (0.0 < success_coverage <= 1.0):
            raise ValueError(f"{success_coverage=} must be in (0, 1]")
        self.success_coverage = success_coverage
        model = mujoco.MjModel.from_xml_string(MJCF)
        super().__init__(
            INFO, model, mujoco.MjData(model), n_substeps=4, push_body="t", xml=MJCF, **config
        )
        jnt = mujoco.mjtObj.mjOBJ_JOINT
        names = ("pusher_x", "pusher_y", "t_x", "t_y", "t_yaw")
        ids = [mujoco.mj_name2id(model, jnt, n) for n in names]
        self.qpos_adr = np.array([model.jnt_qposadr[i] for i in ids])  # (5,)
        self.dof_adr = np.array([model.jnt_dofadr[i] for i in ids])  # (5,)
        self._goal_pose = np.array(GOAL_POSE, dtype=np.float64)  # (3,) x, y, yaw

    # ------------------------------------------------------------------ poses

    def t_pose(self) -> np.ndarray:
        """(3,) the T's true pose: centroid x, y (m) and yaw (rad, wrapped)."""
        q = self.data.qpos[self.qpos_adr[2:]]
        return np.array([q[0], q[1], float(wrap_angle(q[2]))])

    def goal_pose(self) -> np.ndarray:
        """(3,) the target pose x, y, yaw."""
        return self._goal_pose.copy()

    def pose_errors(self) -> tuple[float, float]:
        """(position error m, |yaw error| rad) of the T against the target."""
        pose = self.t_pose()
        pos = float(np.linalg.norm(pose[:2] - self._goal_pose[:2]))
        return pos, float(abs(wrap_angle(pose[2] - self._goal_pose[2])))

    def coverage(self) -> float:
        """Share of the target T's area the T covers now (`t_coverage`)."""
        return t_coverage(self.t_pose(), self._goal_pose)

    def at_goal(self) -> bool:
        """The T is at rest and covers `success_coverage` of the target T (the coverage is
        computed only when the pose is near)."""
        v = self.data.qvel[self.dof_adr[2:]]
        if np.hypot(v[0], v[1]) > REST_SPEED_M_S or abs(v[2]) > REST_YAW_RATE:
            return False
        pos, yaw = self.pose_errors()
        if pos > NEAR_POS_M or yaw > NEAR_YAW_RAD:
            return False
        return self.coverage() >= self.success_coverage

    # ------------------------------------------------------------------ task hooks

    def _init_episode(self, rng: np.random.Generator, options: dict[str, Any]) -> None:
        """`options`: `goal` (x, y, yaw), `t_pose` (x, y, yaw), `pusher` (x, y) override the
        draws (tests, analysis); the draws happen anyway, so the stream stays the same."""
        self._goal_pose = np.array(options.get("goal", GOAL_POSE), dtype=np.float64)
        while True:
            t = np.array([*rng.uniform(-T_START_M, T_START_M, 2), rng.uniform(-np.pi, np.pi)])
            p = rng.uniform(-PUSHER_START_M, PUSHER_START_M, 2)
            if "t_pose" in options:
                t = np.array(options["t_pose"], dtype=np.float64)
            if "pusher" in options:
                p = np.array(options["pusher"], dtype=np.float64)
            self._set(p, t)
            clear = "pusher" in options or self._clearance(p, t) > 0.01
            if clear and ("t_pose" in options or not self.at_goal()):
                break

    def _set(self, pusher: np.ndarray, t: np.ndarray) -> None:
        self.data.qpos[self.qpos_adr] = [pusher[0], pusher[1], t[0], t[1], t[2]]
        self.data.qvel[:] = 0.0

    @staticmethod
    def _clearance(p: np.ndarray, t: np.ndarray) -> float:
        """Distance from the pusher's surface at `p` to the T at pose `t` (< 0: overlap)."""
        c, s = np.cos(t[2]), np.sin(t[2])
        d = np.array([[c, s], [-s, c]]) @ (p - t[:2])  # p in the T's frame
        gaps = []
        for (hx, hy), cy in ((BAR_HALF_M, BAR_Y_M), (STEM_HALF_M, STEM_Y_M)):
            out = np.maximum(np.abs(d - [0.0, cy]) - [hx, hy], 0.0)
            gaps.append(float(np.linalg.norm(out)))
        return min(gaps) - PUSHER_RADIUS_M

    def _state(self) -> np.ndarray:
        q = self.data.qpos[self.qpos_adr]
        v = self.data.qvel[self.dof_adr]
        return np.array(
            [q[0], q[1], v[0], v[1], q[2], q[3], np.sin(q[4]), np.cos(q[4]), v[2], v[3], v[4]],
            dtype=np.float64,
        )

    def _goal(self) -> np.ndarray:
        x, y, yaw = self._goal_pose
        return np.array([x, y, np.sin(yaw), np.cos(yaw)], dtype=np.float64)

    def _reward(self, action: np.ndarray) -> float:
        # the pose error as one length: centroid error plus yaw error times the radius of
        # gyration, about how far the T's points are from where they should be
        pos, yaw = self.pose_errors()
        return -(pos + RADIUS_OF_GYRATION_M * yaw)

    def _terminal(self) -> str | None:
        return "goal" if self.at_goal() else None

    def _success(self, kind: str | None) -> bool:
        return self.at_goal()

    def _episode_info(self) -> dict[str, Any]:
        pos, yaw = self.pose_errors()
        return {"coverage": self.coverage(), "pos_err_m": pos, "yaw_err_rad": yaw}

    def write_state(
        self, model: mujoco.MjModel, data: mujoco.MjData, state: np.ndarray, goal: np.ndarray
    ) -> None:
        s = np.asarray(state, dtype=np.float64)
        data.qpos[self.qpos_adr] = [s[0], s[1], s[4], s[5], np.arctan2(s[6], s[7])]
        data.qvel[:] = 0.0
        data.qvel[self.dof_adr] = [s[2], s[3], s[8], s[9], s[10]]
        mujoco.mj_forward(model, data)

    def mpc_cost(
        self,
        qpos: np.ndarray,
        qvel: np.ndarray,
        ctrl: np.ndarray,
        sensordata: np.ndarray,
        goal: np.ndarray,
    ) -> np.ndarray:
        """The pose error (as in the reward) summed over the horizon, plus the pusher's
        distance to the T's centroid (so a plan that never reaches the T still ranks)."""
        a = self.qpos_adr
        g = np.asarray(goal, dtype=np.float64)
        pos = np.linalg.norm(qpos[..., a[2:4]] - g[:2], axis=-1)  # (B, H)
        yaw = np.abs(wrap_angle(qpos[..., a[4]] - np.arctan2(g[2], g[3])))
        reach = np.linalg.norm(qpos[..., a[0:2]] - qpos[..., a[2:4]], axis=-1)
        total: np.ndarray = np.sum(pos + RADIUS_OF_GYRATION_M * yaw + 0.1 * reach, axis=-1)
        return total


def _radius_of_gyration() -> float:
    """sqrt(I / m) of the T about its centroid (uniform density), m."""
    inertia = 0.0
    for (hx, hy), cy, area in ((BAR_HALF_M, BAR_Y_M, _BAR_AREA), (STEM_HALF_M, STEM_Y_M,
                                                                   _STEM_AREA)):
        inertia += area * ((2 * hx) ** 2 + (2 * hy) ** 2) / 12 + area * cy**2
    return float(np.sqrt(inertia / T_AREA_M2))


RADIUS_OF_GYRATION_M = _radius_of_gyration()  # ~0.044 m
