"""Expert for `push-t`: choose a push by rolling candidates out on the model, go there around
the T, push, repeat.

A push is a primitive: the pusher starts at rest at an approach point `a`, 1.2 cm off the T's
surface along the outward normal at a contact point, and moves in a straight line at a set
speed for a set distance past the surface, then stops; the T slides on and comes to rest.
The candidates are every reachable contact point on the T's outline (about every 1.5 cm; the
approach point must be free of the T and the walls) times a direction (the inward normal, or
turned by +-`angle_rad`) times a (speed, length): slow and short for the last millimetres
(3 cm/s for 2 mm, 5 cm/s for 5 or 15 mm), fast and long for the rest (20 cm/s for 2, 5 or
10 cm). All of them are rolled out at once with `mujoco.rollout` on the expert's own copy of
the model, from where the T will come to rest (itself a short rollout when the T still
slides), and scored by how much they reduce the T's pose error once it has stopped again
(centroid error plus yaw error times the T's radius of gyration, the reward's measure), less
`travel_cost` x the error left x the metres the pusher has to travel to the approach point (far
from the target a long way round has to buy a better push; close in, any push that helps is
worth the trip). The best push is taken, or, for multimodal demonstrations, one drawn at random
(the expert's seeded generator) among those within `tie` of the best gain: the T gets pushed
from different sides and in different orders from episode to episode. When no push helps, the
one that harms the pose least. `mode` is the outline edge (index into `t_outline()`) of the
push under way, -1 before the first; `rtdiff collect` records it per tick.

Getting there: a shortest path on a visibility graph around the T's two boxes inflated by the
pusher's radius plus 8 mm (the corners of the boxes inflated a little further are the
graph's nodes; nodes outside the walls are dropped), recomputed every tick, followed at
`nav_speed` and closed in on with a proportional law. A pusher caught inside the inflated boxes
(after a push) first backs straight away from the T. Once at the approach point and slow, the
push runs as it was rolled out: the rolled-out velocity, plus `gain` x the pusher's distance
from where the rollout had it after as many ticks (zero when nothing disturbed it). The plan
is redone after each push, and during the approach whenever the T's predicted rest pose moves
by more than 3 mm or 0.03 rad from the one planned for (a disturbance, or a coast that ended
elsewhere).

All the work happens in `observe` (a plan is tens to hundreds of milliseconds, a tick without
one well under a millisecond), so `refine` returns 0; `plans` and `plan_s` count what the plans
cost.
"""

from __future__ import annotations

import heapq
import time

import mujoco
import numpy as np
from mujoco import rollout

from runtime import Observation, PlantSpec
from sims.registry import make_task_env
from sims.tasks.push_t import (
    BAR_HALF_M,
    BAR_Y_M,
    PUSHER_RADIUS_M,
    RADIUS_OF_GYRATION_M,
    STEM_HALF_M,
    STEM_Y_M,
    WALL_M,
    PushTEnv,
    wrap_angle,
)

TRANSIT_GAP_M = 0.008  # the pusher's surface stays this far from the T while travelling
NODE_GAP_M = 0.012  # graph nodes and approach points: this far off the T's surface
# (centre, half size) of the T's boxes in its own frame
BOXES = (
    (np.array([0.0, BAR_Y_M]), np.array(BAR_HALF_M)),
    (np.array([0.0, STEM_Y_M]), np.array(STEM_HALF_M)),
)


def t_outline() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The T's outline in its own frame as edges (start (2,), end (2,), outward normal (2,))."""
    bx, by = BAR_HALF_M
    sx, sy = STEM_HALF_M
    top, under, bottom = BAR_Y_M + by, BAR_Y_M - by, STEM_Y_M - sy
    e = [
        ((-bx, top), (bx, top), (0, 1)),  # bar top
        ((bx, under), (bx, top), (1, 0)),  # bar ends
        ((-bx, under), (-bx, top), (-1, 0)),
        ((sx, under), (bx, under), (0, -1)),  # bar underside beside the stem
        ((-bx, under), (-sx, under), (0, -1)),
        ((sx, bottom), (sx, under), (1, 0)),  # stem sides
        ((-sx, bottom), (-sx, under), (-1, 0)),
        ((-sx, bottom), (sx, bottom), (0, -1)),  # stem bottom
    ]
    return [(np.array(a, float), np.array(b, float), np.array(n, float)) for a, b, n in e]


def _inside(p: np.ndarray, grow: float) -> bool:
    """Is point `p` (T frame) inside either box inflated by `grow`?"""
    return any(bool(np.all(np.abs(p - c) < h + grow)) for c, h in BOXES)


def _blocked(p0: np.ndarray, p1: np.ndarray, grow: float) -> bool:
    """Does segment p0-p1 (T frame) pass through the interior of either box inflated by
    `grow`? (slab test; touching the boundary does not count)"""
    d = p1 - p0
    for c, h in BOXES:
        lo, hi = c - h - grow, c + h + grow
        t0, t1 = 0.0, 1.0
        for k in range(2):
            if abs(d[k]) < 1e-12:
                if not (lo[k] < p0[k] < hi[k]):
                    break
                continue
            ta, tb = (lo[k] - p0[k]) / d[k], (hi[k] - p0[k]) / d[k]
            t0, t1 = max(t0, min(ta, tb)), min(t1, max(ta, tb))
            if t0 >= t1:
                break
        else:
            return True
    return False


def _away(p: np.ndarray) -> np.ndarray:
    """Unit direction (T frame) from the nearest of the T's boxes to point `p`."""
    c, h = min(BOXES, key=lambda b: float(np.linalg.norm(np.maximum(np.abs(p - b[0]) - b[1], 0))))
    d = p - np.clip(p, c - h, c + h)  # from the box's nearest point; zero inside the box
    if np.linalg.norm(d) < 1e-9:
        d = p - c
    out: np.ndarray = d / max(float(np.linalg.norm(d)), 1e-9)
    return out


def _out(p: np.ndarray, grow: float) -> np.ndarray:
    """Where backing away from the T (`_away`) takes point `p` out of the boxes inflated by
    `grow`, in 1 mm steps (T frame); `p` itself when it is out already."""
    q = p.copy()
    for _ in range(200):
        if not _inside(q, grow):
            break
        q = q + 0.001 * _away(q)
    return q


def _rot(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s], [s, c]])


class PushTExpert:
    """The push planner (module docstring), an anytime `runtime.Planner` whose work is done in
    `observe`.

    Example:
        ex = PushTExpert(seed=0)
        ex.reset(obs); ex.observe(obs); a = ex.action()  # (2,) velocity command, m/s
    """

    def __init__(
        self,
        task: str = "push-t",
        spec: PlantSpec | None = None,
        *,
        seed: int = 0,
        nav_speed: float = 0.4,
        gain: float = 10.0,
        pushes: tuple[tuple[float, float], ...] = (
            (0.03, 0.002), (0.05, 0.005), (0.05, 0.015), (0.2, 0.02), (0.2, 0.05), (0.2, 0.1),
        ),
        angle_rad: float = 0.3,
        spacing_m: float = 0.015,
        coast_s: float = 0.3,
        travel_cost: float = 0.5,
        tie: float = 0.35,
    ) -> None:
        rate = spec.rate_hz if spec is not None else None
        env = make_task_env(task, disturbances=False, rate_hz=rate)
        if not isinstance(env, PushTEnv):
            raise ValueError(f"the push-t expert runs on push-t, not {task!r}")
        self.env = env
        info = self.env.task
        self._low, self._high = np.array(info.action_low), np.array(info.action_high)
        if not (0 < nav_speed <= float(np.min(self._high))):
            raise ValueError(f"{nav_speed=} must be in (0, {np.min(self._high)}] m/s")
        if any(not (0 < v <= float(np.min(self._high))) or s <= 0 for v, s in pushes):
            raise ValueError(f"{pushes=}: each (speed, length) needs 0 < speed <= the limit, "
                             "length > 0")
        if not (0.0 <= tie < 1.0):
            raise ValueError(f"{tie=} must be in [0, 1)")
        self.nav_speed, self.gain, self.travel_cost, self.tie = nav_speed, gain, travel_cost, tie
        self.model = self.env.model
        self._data = mujoco.MjData(self.model)
        self._rdata = mujoco.MjData(self.model)
        self._period = info.period_s
        self._ns = self.env.n_substeps
        self._rng = np.random.default_rng([seed, 0x7E])
        self._qadr = env.qpos_adr  # pusher x, y, T x, y, yaw
        self._full = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._x = np.zeros(mujoco.mj_stateSize(self.model, self._full))
        self._coast_ticks = max(1, round(coast_s / self._period))
        self._rest_ticks = max(1, round(0.5 / self._period))
        # contact points (T frame) with outward normals, spaced along every edge
        pts, nrm, edge = [], [], []
        for e, (a, b, n) in enumerate(t_outline()):
            k = max(1, round(float(np.linalg.norm(b - a)) / spacing_m))
            for i in range(k):
                pts.append(a + (b - a) * (i + 0.5) / k)
                nrm.append(n)
                edge.append(e)
        contact, normal = np.array(pts), np.array(nrm)
        approach = contact + normal * (PUSHER_RADIUS_M + NODE_GAP_M)
        free = [not _inside(p, PUSHER_RADIUS_M + TRANSIT_GAP_M) for p in approach]
        self.approach_pts = approach[free]  # (P, 2) approach points, T frame
        self.normals = normal[free]  # (P, 2)
        self.edges = np.array(edge)[free]  # (P,) index into `t_outline()`
        # primitives: (direction turned by, speed, length past the surface)
        self.prims = [(t, v, s) for t in (-angle_rad, 0.0, angle_rad) for v, s in pushes]
        # the graph's nodes: box corners inflated past the transit gap, outside the other box
        corners = []
        for c, h in BOXES:
            for sx in (-1, 1):
                for sy in (-1, 1):
                    q = c + np.array([sx, sy]) * (h + PUSHER_RADIUS_M + NODE_GAP_M)
                    if not _inside(q, PUSHER_RADIUS_M + TRANSIT_GAP_M):
                        corners.append(q)
        self.corners = np.array(corners)  # (C, 2)
        self.phase = "plan"
        self.mode = -1  # the outline edge (0-7) of the push under way; datasets record it
        self.plans = 0
        self.plan_s = 0.0  # seconds spent planning
        self.predicted = np.zeros(3)  # the T's rest pose the plan expects after its push
        self._u = np.zeros(2)
        self._plan_pose = np.zeros(3)
        self._a = np.zeros(2)  # approach point, T frame of the planned pose
        self._push_u = np.zeros(2)  # world velocity of the push
        self._push_ticks = 0
        self._push_ref = np.zeros((1, 2))  # (ticks, 2) the pusher after each tick, as rolled out
        self._k = 0
        self._goal = np.zeros(3)

    # --------------------------------------------------------------- Planner

    def reset(self, obs: Observation) -> None:
        self.phase, self.mode = "plan", -1
        self._k = 0
        self.observe(obs)

    def observe(self, obs: Observation) -> None:
        s = np.asarray(obs.state, dtype=np.float64)
        g = np.asarray(obs.goal, dtype=np.float64)
        self._goal = np.array([g[0], g[1], np.arctan2(g[2], g[3])])
        u = self._step(s)
        if u.shape != (2,) or not np.all(np.isfinite(u)):
            u = np.zeros(2)
        self._u = np.clip(u, self._low, self._high)

    def refine(self, budget_ns: int) -> int:
        return 0

    def action(self) -> np.ndarray:
        return self._u.copy()

    # --------------------------------------------------------------- the state machine

    def _step(self, s: np.ndarray) -> np.ndarray:
        if self.phase == "push":
            self._k += 1
            if self._k < self._push_ticks:  # the rolled-out velocity, and back onto its path
                u: np.ndarray = self._push_u + self.gain * (self._push_ref[self._k - 1] - s[:2])
                return u
            self.phase = "plan"
        rest = self.rest_pose(s)
        if self.phase == "go" and self._moved(rest):
            self.phase = "plan"
        if self.phase == "plan":
            t0 = time.perf_counter()
            self._plan(s, rest)
            self.plan_s += time.perf_counter() - t0
            self.plans += 1
            self.phase = "go"
        return self._go(s)

    def _moved(self, rest: np.ndarray) -> bool:
        d = rest - self._plan_pose
        return bool(np.linalg.norm(d[:2]) > 0.003 or abs(wrap_angle(d[2])) > 0.03)

    def _go(self, s: np.ndarray) -> np.ndarray:
        """Travel to the approach point around the T; start the push once there and slow."""
        pose = self._plan_pose
        rot = _rot(pose[2])
        p = rot.T @ (s[:2] - pose[:2])  # pusher in the T frame
        err = self._a - p
        if np.linalg.norm(err) < 0.002 and np.linalg.norm(s[2:4]) < 0.02:
            self.phase, self._k = "push", 0
            u: np.ndarray = self._push_u + self.gain * rot @ err
            return u
        if _inside(p, PUSHER_RADIUS_M + TRANSIT_GAP_M - 1e-4):  # back away from the T first
            return rot @ (self.nav_speed * _away(p))
        path = self._path(p, self._a)
        if path is None or len(path) < 2:  # unreachable now: hold, and plan again
            self.phase = "plan"
            return np.zeros(2)
        w = path[1]
        d = w - p
        dist = float(np.linalg.norm(d))
        speed = self.nav_speed if len(path) > 2 else min(self.nav_speed, self.gain * dist)
        return rot @ (speed * d / max(dist, 1e-9))

    # --------------------------------------------------------------- paths

    def _valid_nodes(self, pose: np.ndarray) -> np.ndarray:
        """The graph's corner nodes (T frame) that lie inside the walls at `pose`."""
        world = self.corners @ _rot(pose[2]).T + pose[:2]
        ok = np.all(np.abs(world) < WALL_M - PUSHER_RADIUS_M - 0.003, axis=1)
        out: np.ndarray = self.corners[ok]
        return out

    def _dijkstra(self, start: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Shortest distances (C,) from `start` to each node around the T, T frame."""
        grow = PUSHER_RADIUS_M + TRANSIT_GAP_M
        n = len(nodes)
        dist = np.full(n, np.inf)
        heap = []
        for i in range(n):
            if not _blocked(start, nodes[i], grow):
                dist[i] = float(np.linalg.norm(nodes[i] - start))
                heap.append((dist[i], i))
        heapq.heapify(heap)
        done = np.zeros(n, bool)
        while heap:
            d, i = heapq.heappop(heap)
            if done[i]:
                continue
            done[i] = True
            for j in range(n):
                if done[j]:
                    continue
                nd = d + float(np.linalg.norm(nodes[j] - nodes[i]))
                if nd < dist[j] and not _blocked(nodes[i], nodes[j], grow):
                    dist[j] = nd
                    heapq.heappush(heap, (nd, j))
        return dist

    def _path(self, p: np.ndarray, goal: np.ndarray) -> list[np.ndarray] | None:
        """The shortest path p -> goal around the T (T frame), as a list of points."""
        grow = PUSHER_RADIUS_M + TRANSIT_GAP_M
        if not _blocked(p, goal, grow):
            return [p, goal]
        nodes = self._valid_nodes(self._plan_pose)
        pts = [p, goal, *nodes]
        n = len(pts)
        dist = np.full(n, np.inf)
        prev = np.full(n, -1)
        dist[0] = 0.0
        heap = [(0.0, 0)]
        while heap:
            d, i = heapq.heappop(heap)
            if d > dist[i]:
                continue
            if i == 1:
                break
            for j in range(1, n):
                nd = d + float(np.linalg.norm(pts[j] - pts[i]))
                if nd < dist[j] and not _blocked(pts[i], pts[j], grow):
                    dist[j], prev[j] = nd, i
                    heapq.heappush(heap, (nd, j))
        if not np.isfinite(dist[1]):
            return None
        out, i = [], 1
        while i >= 0:
            out.append(pts[i])
            i = int(prev[i])
        return out[::-1]

    # --------------------------------------------------------------- planning

    def pose_cost(self, pose: np.ndarray) -> np.ndarray:
        """The pose error as a length (m): centroid error + yaw error x radius of gyration."""
        pose = np.asarray(pose, dtype=np.float64)
        pos = np.linalg.norm(pose[..., :2] - self._goal[:2], axis=-1)
        yaw = np.abs(wrap_angle(pose[..., 2] - self._goal[2]))
        out: np.ndarray = pos + RADIUS_OF_GYRATION_M * yaw
        return out

    def _write(self, s: np.ndarray) -> None:
        self.env.write_state(self.model, self._data, s, np.zeros(4))
        mujoco.mj_getState(self.model, self._data, self._x, self._full)

    def rest_pose(self, s: np.ndarray) -> np.ndarray:
        """(3,) where the T comes to rest if the pusher stops now (its pose, if it is still)."""
        pose = np.array([s[4], s[5], np.arctan2(s[6], s[7])])
        if np.linalg.norm(s[8:10]) < 0.005 and abs(s[10]) < 0.05:
            return pose
        self._write(s)
        ctrl = np.zeros((1, self._rest_ticks * self._ns, 2))
        state, _ = rollout.rollout(self.model, self._rdata, self._x[None], ctrl)
        q = state[0, -1, 1 + self._qadr[2:]]
        return np.array([q[0], q[1], float(wrap_angle(q[2]))])

    def _plan(self, s: np.ndarray, rest: np.ndarray) -> None:
        """Score every candidate push from the T's rest pose and take one (module docstring)."""
        self._plan_pose = rest
        rot = _rot(rest[2])
        grow = PUSHER_RADIUS_M + TRANSIT_GAP_M
        p_in = rot.T @ (s[:2] - rest[:2])
        p = _out(p_in, grow)  # a pusher against the T (after a push) backs out first
        back = float(np.linalg.norm(p - p_in))
        nodes = self._valid_nodes(rest)
        node_dist = self._dijkstra(p, nodes)
        # travel to each approach point: straight, or via the best visible node
        world = self.approach_pts @ rot.T + rest[:2]
        travel = np.full(len(world), np.inf)
        for i, a in enumerate(self.approach_pts):
            if np.any(np.abs(world[i]) > WALL_M - PUSHER_RADIUS_M - 0.003):
                continue
            if not _blocked(p, a, grow):
                travel[i] = back + float(np.linalg.norm(a - p))
                continue
            for j in range(len(nodes)):
                if np.isfinite(node_dist[j]) and not _blocked(nodes[j], a, grow):
                    via = back + node_dist[j] + float(np.linalg.norm(a - nodes[j]))
                    travel[i] = min(travel[i], via)
        reach = np.flatnonzero(np.isfinite(travel))
        if len(reach) == 0:  # boxed in (against a wall): wait where we are
            self._a = p_in.copy()
            self._push_u, self._push_ticks, self.mode = np.zeros(2), 1, -1
            self._push_ref = (rest[:2] + rot @ p_in)[None]
            self.predicted = rest
            return
        # candidates: reachable approach point x primitive
        cand = [(int(i), k) for i in reach for k in range(len(self.prims))]
        ticks = np.array([self._ticks(k) for _, k in cand])
        n_steps = (int(ticks.max()) + self._coast_ticks) * self._ns
        rest_state = s.copy()
        rest_state[4:6] = rest[:2]
        rest_state[6:8] = np.sin(rest[2]), np.cos(rest[2])
        rest_state[8:11] = 0.0
        rest_state[2:4] = 0.0
        self._write(rest_state)
        x0 = np.tile(self._x, (len(cand), 1))
        ctrl = np.zeros((len(cand), n_steps, 2))
        vel = np.zeros((len(cand), 2))
        for c, ((i, k), n) in enumerate(zip(cand, ticks, strict=True)):
            x0[c, 1 + self._qadr[:2]] = world[i]  # FULLPHYSICS = [time, qpos, qvel, ...]
            turn, speed, _ = self.prims[k]
            vel[c] = speed * (rot @ (_rot(turn) @ -self.normals[i]))
            ctrl[c, : n * self._ns] = vel[c]
        state, _ = rollout.rollout(self.model, self._rdata, x0, ctrl)
        q = state[:, -1, 1 + self._qadr[2:]]  # (N, 3) T pose at the end
        after = self.pose_cost(q)
        now = float(self.pose_cost(rest))
        # travel costs in proportion to the error left: far off, a long way round has to buy
        # a better push; close in, any push that helps is worth the trip
        gain = now - after - self.travel_cost * now * travel[[i for i, _ in cand]]
        best = float(gain.max())
        if best > 0:  # one of those within `tie` of the best gain, at random
            c = int(self._rng.choice(np.flatnonzero(gain >= (1 - self.tie) * best)))
        else:  # nothing helps: the least harm to the pose
            c = int(np.argmin(after))
        i, _ = cand[c]
        self.mode = int(self.edges[i])
        self._a = self.approach_pts[i].copy()
        self._push_u = vel[c]
        self._push_ticks = int(ticks[c])
        self._push_ref = state[c][self._ns - 1 :: self._ns][:, 1 + self._qadr[:2]]  # (T, 2)
        self.predicted = np.array([q[c, 0], q[c, 1], float(wrap_angle(q[c, 2]))])

    def _ticks(self, k: int) -> int:
        """Ticks primitive k pushes for: the approach gap (along a turned line) and its length
        past the surface, at its speed."""
        turn, speed, length = self.prims[k]
        gap = NODE_GAP_M / max(np.cos(turn), 0.5)
        return max(1, int(np.ceil((gap + length) / (speed * self._period))))
