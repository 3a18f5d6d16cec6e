"""`DynamixelDriver`: Dynamixel X-series servos on a protocol 2.0 bus as a `runtime.Plant`.

Serve it with `rtdiff serve --plant py:hw_bridge.dynamixel:DynamixelDriver --plant-arg
port=/dev/ttyUSB0 --plant-arg ids=1,2 --realtime` (docs/hardware.md: wiring, the FTDI
latency timer, permissions, trying it on the emulated bus of `hw_bridge.dxl_emu`).

Arguments (all keywords; from the command line as `--plant-arg KEY=VALUE`):
- `port`: the serial device, e.g. /dev/ttyUSB0 (a U2D2) or an emulated bus's pty;
- `ids`: servo ids, a list of ints or a string "1,2,3" (the joint order);
- `baud`: the bus's baud rate, default 1_000_000 (X-series leave the factory at 57600: set
  1 Mbaud or more with Dynamixel Wizard: at 57600 one tick's bus traffic takes ~10 ms);
- `operating_mode`: "position" (default) or "current", one for all or one per joint (a list or
  "position,current");
- `rate_hz`: the control rate the spec advertises, default 100;
- `safe`: "hold" (default) or "torque_off", what the watchdog's safe action does (below);
- `latency_timer_ms`: the USB adapter's latency timer (below), default 1;
- `mode`: the run mode `rtdiff serve` passes; only "realtime" (servos do not wait for
  commands, so lockstep serving is refused with a pointer to --realtime);
- `clock`: the clock `t_ns` is read from (tests share one with the emulator).

Layout, per joint in the order of `ids`: state = positions [rad] then velocities [rad/s]
(position 0 rad is the servo's centre, 2048 ticks); action = goal position [rad] for a joint in
position mode, goal current [A] for one in current mode. The action limits are the servos' own
registers (Min/Max Position Limit, Current Limit), read at connect and converted to SI units;
in position mode the spec's rate limit is the servo's Velocity Limit register.

The bus work, per call:
- the constructor connects (`connect()`), so `spec()` holds the servos' limits before a
  server is built on it, and a missing servo fails the construction: open the port, ping
  every id (model number), refuse a servo in hardware alarm, set the operating mode (with
  torque off: the servo refuses it otherwise), read the limit registers, set each goal to where
  the servo is (position) or to 0 A (current), enable torque, take a first reading.
- `read()`: ONE sync read of Present Velocity + Present Position (128..135, one block) for all
  ids, stamped with `self.clock` right after the instruction went out. A failed or partial
  read invents nothing: it returns the last good reading with its old `t_ns` (the base class
  flags it stale) and counts `comm_errors`. A status packet with an error byte is counted
  (`servo_errors`) and logged once per servo; its data still counts (a hardware alarm does not
  make the reading wrong, and the servo has turned its own torque off).
- `write(action)`: ONE sync write of Goal Position (or Goal Current) for all ids, clipped again
  to the register limits (a servo refuses an out-of-limit goal; defence in depth). Joints in
  mixed modes take one sync write per mode.
- `safe_action(state)`: hold, i.e. each position joint's goal is where it is, each current
  joint's goal 0 A. The server's watchdog (and a controller's goodbye) hands it to `apply` as
  a command with `fallback="watchdog"`. With `safe="hold"` (default) it is written like any
  command and torque stays on; with `safe="torque_off"` the driver turns torque off instead and
  refuses further commands (`TorqueOff`, answered `plant_error`) until a `reset()`, whose
  `home()` sets each goal to the present position before turning torque back on.
- `disconnect()`: torque off for every id, close the port; idempotent.

`latency_timer_ms` is the USB adapter's latency timer: an FTDI chip (the U2D2's) holds a short
reply for up to that long before passing it on, 16 ms unless set to 1 (docs/hardware.md). The
driver waits `2 * latency_timer_ms + 2 ms` plus the bytes' time on the wire for a reply (the SDK
assumes 16 ms everywhere); when the adapter's sysfs entry says more than `latency_timer_ms`,
it warns and waits for what the adapter really does.

`dynamixel_sdk` (untyped: `Any` at that boundary) is imported on connect, so importing this
module or `hw_bridge` needs no SDK.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hw_bridge.driver import Driver, DriverNotConnected
from runtime.protocols import Clock, Command, FloatArray, PlantSpec

__all__ = [
    "ADDR_CURRENT_LIMIT",
    "ADDR_GOAL_CURRENT",
    "ADDR_GOAL_POSITION",
    "ADDR_HARDWARE_ERROR_STATUS",
    "ADDR_MAX_POSITION_LIMIT",
    "ADDR_MIN_POSITION_LIMIT",
    "ADDR_OPERATING_MODE",
    "ADDR_PRESENT_CURRENT",
    "ADDR_PRESENT_POSITION",
    "ADDR_PRESENT_VELOCITY",
    "ADDR_TORQUE_ENABLE",
    "ADDR_VELOCITY_LIMIT",
    "MODELS",
    "DynamixelDriver",
    "ServoModel",
    "TorqueOff",
    "ftdi_latency_timer_ms",
]

log = logging.getLogger(__name__)

# X-series control table, protocol 2.0 (e-manual, XM430-W350 / XL430-W250: same addresses)
ADDR_MODEL_NUMBER = 0  # 2 bytes, read-only
ADDR_OPERATING_MODE = 11  # 1 byte, EEPROM: 0 current, 3 position (writable with torque off)
ADDR_CURRENT_LIMIT = 38  # 2 bytes, EEPROM, model's current unit (not on XL430/XC430)
ADDR_VELOCITY_LIMIT = 44  # 4 bytes, EEPROM, 0.229 rev/min
ADDR_MAX_POSITION_LIMIT = 48  # 4 bytes, EEPROM, ticks (position mode only)
ADDR_MIN_POSITION_LIMIT = 52  # 4 bytes, EEPROM, ticks
ADDR_TORQUE_ENABLE = 64  # 1 byte, RAM
ADDR_HARDWARE_ERROR_STATUS = 70  # 1 byte, read-only
ADDR_GOAL_CURRENT = 102  # 2 bytes signed, current unit
ADDR_GOAL_POSITION = 116  # 4 bytes signed, ticks
ADDR_PRESENT_CURRENT = 126  # 2 bytes signed (XL430/XC430: Present Load)
ADDR_PRESENT_VELOCITY = 128  # 4 bytes signed, 0.229 rev/min
ADDR_PRESENT_POSITION = 132  # 4 bytes signed, ticks
READ_ADDR, READ_LEN = ADDR_PRESENT_VELOCITY, 8  # one block: velocity then position

OPERATING_MODES = {"current": 0, "position": 3}
CENTER_TICKS = 2048  # 0 rad
RAD_PER_TICK = 2.0 * math.pi / 4096
RAD_S_PER_VEL_UNIT = 0.229 * 2.0 * math.pi / 60.0
BAUD_RATES = (9600, 57600, 115200, 1_000_000, 2_000_000, 3_000_000, 4_000_000)
COMM_SUCCESS = 0  # dynamixel_COMM_SUCCESS, the result code of a transfer that worked
_POLL_S = 0.0005  # the longest a read of the port blocks before the SDK checks its timeout
ERR_ALERT = 0x80  # status error byte: the servo is in hardware alarm
HARDWARE_ERRORS = {0: "input voltage", 2: "overheating", 3: "motor encoder",
                   4: "electrical shock", 5: "overload"}


@dataclass(frozen=True)
class ServoModel:
    """What the driver needs to know of a model: its name and its current unit [A]
    (None: no current control, position mode only)."""

    name: str
    amps_per_unit: float | None


# X-series models by model number (register 0); they share the control table above.
MODELS: dict[int, ServoModel] = {
    1020: ServoModel("XM430-W350", 2.69e-3),
    1030: ServoModel("XM430-W210", 2.69e-3),
    1120: ServoModel("XM540-W270", 2.69e-3),
    1130: ServoModel("XM540-W150", 2.69e-3),
    1190: ServoModel("XL330-M077", 1.0e-3),
    1200: ServoModel("XL330-M288", 1.0e-3),
    1060: ServoModel("XL430-W250", None),
    1070: ServoModel("XC430-W150", None),
}


class TorqueOff(RuntimeError):
    """A command while torque is off after a safety stop (`safe="torque_off"`)."""


def ftdi_latency_timer_ms(port: str) -> int | None:
    """The USB-serial adapter's latency timer [ms] from sysfs, None when there is none (not an
    FTDI adapter, not Linux, a pseudo-terminal)."""
    name = os.path.basename(os.path.realpath(port))
    try:
        return int(Path(f"/sys/bus/usb-serial/devices/{name}/latency_timer").read_text())
    except (OSError, ValueError):
        return None


def _sdk() -> Any:
    try:
        import dynamixel_sdk
    except ImportError as exc:
        raise ImportError(
            "DynamixelDriver needs the dynamixel-sdk package: pip install dynamixel-sdk==4.1.0"
        ) from exc
    return dynamixel_sdk


def _parse_ids(ids: Any) -> tuple[int, ...]:
    """`ids` as --plant-arg gives it: an int, a list of ints, or a string "1,2,3"."""
    if isinstance(ids, int) and not isinstance(ids, bool):
        items: list[Any] = [ids]
    elif isinstance(ids, str):
        items = [x.strip() for x in ids.split(",") if x.strip()]
    elif isinstance(ids, list | tuple):
        items = list(ids)
    else:
        raise ValueError(f"ids={ids!r}: give servo ids as 1,2,3 or a list of ints")
    try:
        out = tuple(int(x) for x in items)
    except (TypeError, ValueError):
        raise ValueError(f"ids={ids!r}: servo ids must be integers") from None
    if not out or len(set(out)) != len(out) or not all(0 <= i <= 252 for i in out):
        raise ValueError(f"ids={ids!r}: need one or more distinct ids in [0, 252]")
    return out


def _parse_modes(mode: Any, n: int) -> tuple[str, ...]:
    """One operating mode for all joints, a list of `n`, or a string "position,current"."""
    if isinstance(mode, str):
        modes = [m.strip() for m in mode.split(",")] if "," in mode else [mode.strip()] * n
    elif isinstance(mode, list | tuple):
        modes = list(mode)
    else:
        modes = []
    if len(modes) != n or any(m not in OPERATING_MODES for m in modes):
        raise ValueError(f"operating_mode={mode!r}: 'position' or 'current', one for all "
                         f"joints or one per joint ({n})")
    return tuple(modes)


def _signed(value: int, size: int) -> int:
    bits = 8 * size
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def _alarm_text(bits: int) -> str:
    names = [name for bit, name in HARDWARE_ERRORS.items() if bits >> bit & 1]
    return ", ".join(names) or "unknown"


class DynamixelDriver(Driver):
    """X-series servos on one protocol 2.0 bus, through `dynamixel_sdk` (see the module doc).

    Example:
        driver = DynamixelDriver(port="/dev/ttyUSB0", ids="1,2", operating_mode="position")
        PlantServer(driver, bind="tcp://0.0.0.0:5555", mode="realtime").serve_forever()
    """

    def __init__(
        self,
        *,
        port: str,
        ids: Any,
        baud: int = 1_000_000,
        operating_mode: str | Sequence[str] = "position",
        rate_hz: float = 100.0,
        safe: str = "hold",
        latency_timer_ms: float = 1.0,
        mode: str = "realtime",
        clock: Clock | None = None,
    ) -> None:
        if mode != "realtime":
            raise ValueError(f"mode={mode!r}: servos run on the wall clock; serve with --realtime")
        self.port = str(port)
        self.ids = _parse_ids(ids)
        self.modes = _parse_modes(operating_mode, len(self.ids))
        if baud not in BAUD_RATES:
            raise ValueError(f"baud={baud!r}: one of {', '.join(map(str, BAUD_RATES))}")
        if safe not in ("hold", "torque_off"):
            raise ValueError(f"safe={safe!r}: 'hold' or 'torque_off'")
        if not (isinstance(rate_hz, int | float) and 0 < rate_hz <= 10_000):
            raise ValueError(f"rate_hz={rate_hz!r}: a control rate in (0, 10000] Hz")
        if not (isinstance(latency_timer_ms, int | float) and 1 <= latency_timer_ms <= 255):
            raise ValueError(f"latency_timer_ms={latency_timer_ms!r}: in [1, 255] ms")
        self.baud = int(baud)
        self.safe = safe
        self.rate_hz = float(rate_hz)
        self.latency_timer_ms = float(latency_timer_ms)
        self.reply_latency_ms = self.latency_timer_ms
        n = len(self.ids)
        self._pos = np.array([m == "position" for m in self.modes])  # (n,) position joints
        # register limits per joint, filled by connect(): ticks for position, units for current
        self._low_units = np.zeros(n, dtype=np.int64)
        self._high_units = np.zeros(n, dtype=np.int64)
        self._amps_per_unit = np.ones(n)
        self.models: tuple[ServoModel, ...] = ()
        # nominal limits until connect() (below) replaces them with the servos' own
        super().__init__(self._make_spec(np.full(n, -math.pi), np.full(n, math.pi), None),
                         clock=clock)
        self._port: Any = None
        self._packet: Any = None
        self._reader: Any = None
        self._writers: dict[str, Any] = {}
        self._last: tuple[FloatArray, int] | None = None
        self.torque_on = False
        self._alarmed: set[int] = set()
        self.last_error: dict[int, int] = {}  # servo id -> last non-zero status error byte
        self._counts.update(comm_errors=0, servo_errors=0, torque_offs=0)
        self.connect()  # the spec is the servos' from the start (a server reads it at once)
        self.connected = True

    # -- the spec ------------------------------------------------------------------------------

    def _make_spec(
        self, low: FloatArray, high: FloatArray, rate: FloatArray | None
    ) -> PlantSpec:
        units = ["rad" if p else "a" for p in self._pos]
        return PlantSpec(
            name="dynamixel",
            state_dim=2 * len(self.ids),
            action_dim=len(self.ids),
            action_low=low,
            action_high=high,
            rate_hz=self.rate_hz,
            state_names=tuple(f"j{i}_pos_rad" for i in self.ids)
            + tuple(f"j{i}_vel_rad_s" for i in self.ids),
            action_names=tuple(f"j{i}_goal_{u}" for i, u in zip(self.ids, units, strict=True)),
            max_action_rate_per_s=rate,
        )

    # -- connect -------------------------------------------------------------------------------

    def connect(self) -> None:
        if self._port is not None:
            return
        sdk = _sdk()
        port = sdk.PortHandler(self.port)
        latency = self.latency_timer_ms
        adapter = ftdi_latency_timer_ms(self.port)
        if adapter is not None and adapter > latency:
            log.warning(
                "dynamixel: %s's latency timer is %d ms (every reply can wait that long); "
                "set it to 1: echo 1 | sudo tee /sys/bus/usb-serial/devices/%s/latency_timer",
                self.port, adapter, os.path.basename(os.path.realpath(self.port)),
            )
            latency = float(adapter)
        self.reply_latency_ms = latency  # what the timeouts and the bus-time estimate use
        _use_latency_timer(port, latency)
        try:
            opened = port.setBaudRate(self.baud)
        except OSError as exc:  # serial.SerialException is an OSError
            raise ConnectionError(f"cannot open {self.port}: {exc}") from exc
        if not opened:
            raise ConnectionError(f"cannot open {self.port} at {self.baud} baud")
        self._port = port
        self._packet = sdk.PacketHandler(2.0)
        # The SDK polls the port with a zero timeout, spinning a core while a reply is on its
        # way; a short blocking read returns as soon as the bytes asked for are there.
        port.ser.timeout = _POLL_S
        try:
            self._probe(sdk)
        except BaseException:
            self._close_port()
            raise

    def _probe(self, sdk: Any) -> None:
        """Everything connect() asks of the servos; the port is open."""
        models = []
        for dxl_id in self.ids:
            number, result, _ = self._packet.ping(self._port, dxl_id)
            if result != COMM_SUCCESS:
                raise ConnectionError(
                    f"servo {dxl_id} does not answer on {self.port} at {self.baud} baud "
                    f"({self._packet.getTxRxResult(result).strip()}); check power, wiring, id "
                    "and baud rate (factory default: id 1 at 57600)"
                )
            if number not in MODELS:
                raise ValueError(
                    f"servo {dxl_id} is model number {number}, not one of the X-series models "
                    f"this driver knows ({', '.join(m.name for m in MODELS.values())})"
                )
            models.append(MODELS[number])
        self.models = tuple(models)
        for dxl_id, model, mode in zip(self.ids, self.models, self.modes, strict=True):
            if mode == "current" and model.amps_per_unit is None:
                raise ValueError(f"servo {dxl_id} ({model.name}) has no current control mode")
            alarm = self._read_reg(dxl_id, ADDR_HARDWARE_ERROR_STATUS, 1)
            if alarm:
                raise ConnectionError(
                    f"servo {dxl_id} is in hardware alarm 0x{alarm:02x} ({_alarm_text(alarm)}); "
                    "remove the cause and reboot it (power cycle or Dynamixel Wizard)"
                )
        low, high, rate = np.zeros(len(self.ids)), np.zeros(len(self.ids)), []
        for k, (dxl_id, model, mode) in enumerate(zip(self.ids, self.models, self.modes,
                                                      strict=True)):
            if self._read_reg(dxl_id, ADDR_OPERATING_MODE, 1) != OPERATING_MODES[mode]:
                self._write_reg(dxl_id, ADDR_TORQUE_ENABLE, 1, 0)
                self._write_reg(dxl_id, ADDR_OPERATING_MODE, 1, OPERATING_MODES[mode])
            if mode == "position":
                lo = _signed(self._read_reg(dxl_id, ADDR_MIN_POSITION_LIMIT, 4), 4)
                hi = _signed(self._read_reg(dxl_id, ADDR_MAX_POSITION_LIMIT, 4), 4)
                vmax = self._read_reg(dxl_id, ADDR_VELOCITY_LIMIT, 4) * RAD_S_PER_VEL_UNIT
                low[k] = (lo - CENTER_TICKS) * RAD_PER_TICK
                high[k] = (hi - CENTER_TICKS) * RAD_PER_TICK
                rate.append(vmax if vmax > 0 else math.inf)
            else:
                assert model.amps_per_unit is not None
                self._amps_per_unit[k] = model.amps_per_unit
                lim = self._read_reg(dxl_id, ADDR_CURRENT_LIMIT, 2)
                lo, hi = -lim, lim
                low[k], high[k] = lo * model.amps_per_unit, hi * model.amps_per_unit
                rate.append(math.inf)
            if lo > hi:
                raise ValueError(f"servo {dxl_id}: its limit registers say {lo} > {hi}")
            self._low_units[k], self._high_units[k] = lo, hi
        rates = np.array(rate)
        self._spec = self._make_spec(low, high, None if np.all(np.isinf(rates)) else rates)
        self._reader = sdk.GroupSyncRead(self._port, self._packet, READ_ADDR, READ_LEN)
        for mode, addr, size in (("position", ADDR_GOAL_POSITION, 4),
                                 ("current", ADDR_GOAL_CURRENT, 2)):
            ids = [i for i, m in zip(self.ids, self.modes, strict=True) if m == mode]
            if ids:
                writer = sdk.GroupSyncWrite(self._port, self._packet, addr, size)
                for dxl_id in ids:
                    writer.addParam(dxl_id, [0] * size)
                self._writers[mode] = writer
        for dxl_id in self.ids:
            self._reader.addParam(dxl_id)
        self._hold_and_enable()
        self._warn_if_slow()

    def _warn_if_slow(self) -> None:
        n = len(self.ids)
        # sync read out (14 + n bytes), n replies of 19 bytes, sync write out (14 + 5 n bytes),
        # 10 bits a byte, plus one latency timer for the replies to come back over USB
        bus_s = (28 + 25 * n) * 10 / self.baud + self.reply_latency_ms * 1e-3
        if bus_s > 0.5 * self._spec.period_s:
            log.warning(
                "dynamixel: %d servos at %d baud need about %.1f ms of bus time a tick, more "
                "than half the %.1f ms period at %.0f Hz: raise the baud rate or lower rate_hz",
                n, self.baud, bus_s * 1e3, self._spec.period_s * 1e3, self.rate_hz,
            )

    def _hold_and_enable(self) -> None:
        """Goal = where each servo is (position) or 0 A (current), then torque on: enabling
        torque never makes a joint jump to an old goal."""
        state, _ = self._read_or_raise()
        self._write_goals(self.safe_action(state))
        self._set_torque(True)

    def _read_or_raise(self) -> tuple[FloatArray, int]:
        errors = self._counts["comm_errors"]
        reading = self.read()
        if self._counts["comm_errors"] > errors:
            raise ConnectionError(f"the sync read of servos {list(self.ids)} on {self.port} failed")
        return reading

    def _read_reg(self, dxl_id: int, addr: int, size: int) -> int:
        fn = {1: self._packet.read1ByteTxRx, 2: self._packet.read2ByteTxRx,
              4: self._packet.read4ByteTxRx}[size]
        value, result, error = fn(self._port, dxl_id, addr)
        if result != COMM_SUCCESS:
            raise ConnectionError(
                f"servo {dxl_id}: reading register {addr} failed "
                f"({self._packet.getTxRxResult(result).strip()})"
            )
        if error & ~ERR_ALERT:
            raise ConnectionError(f"servo {dxl_id}: reading register {addr}: "
                                  f"{self._packet.getRxPacketError(error).strip()}")
        return int(value)

    def _write_reg(self, dxl_id: int, addr: int, size: int, value: int) -> None:
        fn = {1: self._packet.write1ByteTxRx, 2: self._packet.write2ByteTxRx,
              4: self._packet.write4ByteTxRx}[size]
        result, error = fn(self._port, dxl_id, addr, value & ((1 << 8 * size) - 1))
        if result == COMM_SUCCESS and error & ERR_ALERT:
            self._servo_error(dxl_id, error)  # in alarm, but this write was done
        if result != COMM_SUCCESS or error & ~ERR_ALERT:
            why = (self._packet.getTxRxResult(result) if result != COMM_SUCCESS
                   else self._packet.getRxPacketError(error))
            raise ConnectionError(f"servo {dxl_id}: writing {value} to register {addr} failed "
                                  f"({why.strip()})")

    def _set_torque(self, on: bool) -> None:
        """Torque on (raises if a servo refuses) or off (tries every servo, logs failures)."""
        failed = []
        for dxl_id in self.ids:
            try:
                self._write_reg(dxl_id, ADDR_TORQUE_ENABLE, 1, int(on))
            except ConnectionError as exc:
                if on:
                    raise
                self._counts["comm_errors"] += 1
                failed.append(str(exc))
        if failed:
            log.error("dynamixel: torque off failed: %s", "; ".join(failed))
        self.torque_on = on

    # -- read / write --------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._port is None:
            raise DriverNotConnected(f"{type(self).__name__}: the port is not open")

    def read(self) -> tuple[FloatArray, int]:
        self._require_open()
        packet, port, n = self._packet, self._port, len(self.ids)
        raw = bytearray()
        ok = self._reader.txPacket() == COMM_SUCCESS
        t_ns = self.clock.now_ns()  # the instruction is out: the servos sample now
        if ok:
            # GroupSyncRead.rxPacket drops each status's error byte: read them one by one
            for dxl_id in self.ids:
                data, result, error = packet.readRx(port, dxl_id, READ_LEN)
                if result != COMM_SUCCESS:
                    ok = False
                    break
                if error:
                    self._servo_error(dxl_id, error)
                raw += bytes(data)
        if not ok or len(raw) != n * READ_LEN:
            self._counts["comm_errors"] += 1
            if self._last is None:  # nothing good yet, and nothing is ever made up
                raise ConnectionError(f"no reading from servos {list(self.ids)} on {self.port}")
            return self._last[0].copy(), self._last[1]
        ticks = np.frombuffer(bytes(raw), dtype="<i4").reshape(n, 2)  # (n, [velocity, position])
        state = np.concatenate([
            (ticks[:, 1] - CENTER_TICKS) * RAD_PER_TICK, ticks[:, 0] * RAD_S_PER_VEL_UNIT
        ])
        self._last = (state, t_ns)
        return state.copy(), t_ns

    def _servo_error(self, dxl_id: int, error: int) -> None:
        self._counts["servo_errors"] += 1
        self.last_error[dxl_id] = error
        if dxl_id not in self._alarmed:
            self._alarmed.add(dxl_id)
            log.error("dynamixel: servo %d reports status error 0x%02x: %s", dxl_id, error,
                      self._packet.getRxPacketError(error).strip())

    def write(self, action: FloatArray) -> None:
        self._require_open()
        self._write_goals(np.asarray(action, dtype=np.float64))

    def _write_goals(self, action: FloatArray) -> None:
        units = np.where(self._pos, action / RAD_PER_TICK + CENTER_TICKS,
                         action / self._amps_per_unit)
        units = np.clip(np.rint(units).astype(np.int64), self._low_units, self._high_units)
        for mode, writer in self._writers.items():
            size = 4 if mode == "position" else 2
            for k, dxl_id in enumerate(self.ids):
                if self.modes[k] == mode:
                    writer.changeParam(dxl_id, list(int(units[k]).to_bytes(size, "little",
                                                                          signed=True)))
            if writer.txPacket() != COMM_SUCCESS:
                self._counts["comm_errors"] += 1

    def apply(self, cmd: Command) -> None:
        """The base's apply, except: with `safe="torque_off"` the watchdog's safe action turns
        torque off, and until `reset()` turns it on again every command raises `TorqueOff`."""
        if self.connected and self.safe == "torque_off":
            if cmd.fallback == "watchdog":
                self._set_torque(False)
                self._counts["torque_offs"] += 1
                return
            if not self.torque_on:
                raise TorqueOff("torque is off after a safety stop; reset() turns it back on")
        super().apply(cmd)

    def safe_action(self, state: FloatArray) -> FloatArray:
        """Hold: position joints keep their present position, current joints get 0 A."""
        n = len(self.ids)
        hold = np.where(self._pos, np.asarray(state, dtype=np.float64)[:n], 0.0)
        return np.clip(hold, self._spec.action_low, self._spec.action_high)

    def home(self, seed: int | None) -> None:
        """Stop where the servos are and (after a torque-off safety stop) enable torque again;
        hardware cannot honour a seed."""
        self._hold_and_enable()

    def counters(self) -> dict[str, int]:
        out = super().counters()
        for dxl_id, error in self.last_error.items():
            out[f"servo{dxl_id}_error"] = error
        return out

    # -- disconnect ----------------------------------------------------------------------------

    def disconnect(self) -> None:
        """Torque off for every servo, close the port; idempotent."""
        if self._port is None:
            return
        try:
            self._set_torque(False)
        finally:
            self._close_port()

    def _close_port(self) -> None:
        port, self._port = self._port, None
        self._reader, self._writers = None, {}
        if port is not None and port.is_open:
            port.closePort()


def _use_latency_timer(port: Any, latency_ms: float) -> None:
    """Make the SDK wait `2 * latency_ms + 2` ms plus the bytes' time on the wire for a reply
    (its module-wide `LATENCY_TIMER` is 16 ms: one lost reply would cost 34 ms)."""

    def set_packet_timeout(packet_length: int) -> None:
        port.packet_start_time = port.getCurrentTime()
        port.packet_timeout = port.tx_time_per_byte * packet_length + 2.0 * latency_ms + 2.0

    port.setPacketTimeout = set_packet_timeout
