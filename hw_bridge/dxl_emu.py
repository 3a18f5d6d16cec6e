"""An emulated Dynamixel protocol 2.0 bus on a pseudo-terminal: servos without hardware.

`EmulatedBus(ids)` opens a pseudo-terminal (`os.openpty`, the follower side in raw mode) and
serves it from a thread, speaking the real protocol 2.0 packet format, so any Dynamixel client
(`dynamixel_sdk`, `hw_bridge.dynamixel.DynamixelDriver`, Dynamixel Wizard through a serial
bridge) talks to `bus.port` as it would to `/dev/ttyUSB0`:

    FF FF FD 00 | ID | LEN_L LEN_H | INST | PARAMS... | CRC_L CRC_H

`LEN` counts INST, PARAMS and CRC after byte stuffing (every `FF FF FD` inside INST..PARAMS is
sent as `FF FF FD FD`); the CRC-16 (polynomial 0x8005, the e-manual's table) covers the packet
as sent, stuffing included. Instructions served: PING, READ, WRITE, SYNC_READ, SYNC_WRITE. Each
addressed servo answers with a status packet (instruction 0x55) whose error byte holds the
error number (bits 0-6) and the hardware-alert bit (bit 7); broadcasts (ID 0xFE) other than
PING and SYNC_READ are answered by nobody, as on the real bus.

Each servo has an X-series control table (an XM430-W350 by default: model number 1020; the
addresses are the `hw_bridge.dynamixel` constants) and simple dynamics, evaluated from `clock`
whenever a register is read or written (so positions move between reads, like hardware):
position mode (3) is a first-order lag of time constant `tau_s` toward Goal Position; current
mode (0) turns at a velocity proportional to Goal Current; torque off holds still. As on the
real servo, EEPROM registers (addresses below 64, operating mode included) are writable only
with torque off (Access error otherwise), a Goal Position outside the position limits or a Goal
Current above Current Limit is refused (Data Limit error, counted in `limit_refusals`), and a
hardware error turns the torque off and sets the alert bit of every status packet.

What it does not model: baud rate timing (a pseudo-terminal carries bytes as fast as the two
processes move them, whatever the baud rate), Return Delay Time, Status Return Level other than
2, bulk and fast instructions, and indirect addresses.

Fault injection for tests: `drop_status(id, n)` (the next n status packets of a servo are never
sent), `corrupt_crc(id, n)` (they are sent with a wrong CRC), `set_hardware_error(id, bits)`.

`python -m hw_bridge.dxl_emu --ids 1,2` prints the pty path and serves until Ctrl-C;
`python -m hw_bridge.dxl_emu --bench` measures `DynamixelDriver` sync read and write latency
on an emulated bus served by a child process. Pure stdlib + numpy: no `dynamixel_sdk` here.
"""

from __future__ import annotations

import argparse
import math
import os
import select
import signal
import sys
import threading
import tty
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from runtime.clock import MonotonicClock
from runtime.protocols import Clock

__all__ = [
    "BROADCAST_ID",
    "EmulatedBus",
    "EmulatedServo",
    "crc16",
    "instruction_packet",
    "parse_packet",
    "status_packet",
    "stuff",
    "unstuff",
]

HEADER = b"\xff\xff\xfd\x00"
BROADCAST_ID = 0xFE
INST_PING, INST_READ, INST_WRITE = 0x01, 0x02, 0x03
INST_SYNC_READ, INST_SYNC_WRITE, INST_STATUS = 0x82, 0x83, 0x55
# status error numbers (bits 0-6 of the error byte) and the hardware-alert bit
ERR_INSTRUCTION, ERR_CRC, ERR_DATA_LENGTH, ERR_DATA_LIMIT, ERR_ACCESS = 2, 3, 5, 6, 7
ERR_ALERT = 0x80

# X-series control table (the addresses `hw_bridge.dynamixel` names; repeated here so the
# emulator does not import the driver, which imports dynamixel_sdk)
_MODEL_NUMBER, _FIRMWARE, _ID, _BAUD, _RETURN_DELAY = 0, 6, 7, 8, 9
_OPERATING_MODE, _CURRENT_LIMIT, _VELOCITY_LIMIT = 11, 38, 44
_MAX_POSITION, _MIN_POSITION = 48, 52
_TORQUE_ENABLE, _STATUS_RETURN, _HARDWARE_ERROR = 64, 68, 70
_GOAL_CURRENT, _GOAL_POSITION = 102, 116
_PRESENT_CURRENT, _PRESENT_VELOCITY, _PRESENT_POSITION = 126, 128, 132
_INPUT_VOLTAGE, _TEMPERATURE = 144, 146
_EEPROM_END = 64  # addresses below: writable only with torque off
_RAM_WRITABLE_END = 120  # addresses from here on are read-only (present values)
_TABLE_SIZE = 148
MODE_CURRENT, MODE_POSITION = 0, 3

TICKS_PER_REV = 4096
RAD_PER_TICK = 2.0 * math.pi / TICKS_PER_REV
RAD_S_PER_VEL_UNIT = 0.229 * 2.0 * math.pi / 60.0  # Present Velocity unit: 0.229 rev/min
A_PER_CURRENT_UNIT = 2.69e-3  # XM430: 2.69 mA


def _crc_table() -> tuple[int, ...]:
    """The e-manual's CRC-16 table: polynomial 0x8005, MSB first, no reflection."""
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) if crc & 0x8000 else (crc << 1)
        table.append(crc & 0xFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes | bytearray, crc: int = 0) -> int:
    """Dynamixel protocol 2.0 CRC-16 of `data` (everything from the header to before the CRC).

    Example:
        crc16(bytes.fromhex("FFFFFD0001030001"))  # 0x4E19: the PING example ends 19 4E
    """
    table = _CRC_TABLE
    for b in data:
        crc = ((crc << 8) ^ table[((crc >> 8) ^ b) & 0xFF]) & 0xFFFF
    return crc


def stuff(body: bytes) -> bytes:
    """INST..PARAMS with an extra FD after every `FF FF FD` (so no header appears inside)."""
    out = bytearray()
    for b in body:
        out.append(b)
        if b == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(body: bytes) -> bytes:
    """Undo `stuff`: drop the FD that follows every `FF FF FD`."""
    out = bytearray()
    i = 0
    while i < len(body):
        b = body[i]
        out.append(b)
        if b == 0xFD and len(out) >= 3 and out[-3] == 0xFF and out[-2] == 0xFF:
            i += 1  # skip the stuffed FD
        i += 1
    return bytes(out)


def instruction_packet(dxl_id: int, instruction: int, params: bytes = b"") -> bytes:
    """A complete protocol 2.0 packet: header, id, stuffed length, body, CRC."""
    body = stuff(bytes([instruction]) + params)
    pkt = HEADER + bytes([dxl_id]) + (len(body) + 2).to_bytes(2, "little") + body
    return pkt + crc16(pkt).to_bytes(2, "little")


def status_packet(dxl_id: int, error: int, params: bytes = b"") -> bytes:
    return instruction_packet(dxl_id, INST_STATUS, bytes([error]) + params)


@dataclass
class Parsed:
    """One packet taken off the wire: its id, instruction, unstuffed params, CRC verdict."""

    dxl_id: int
    instruction: int
    params: bytes
    crc_ok: bool


def parse_packet(buf: bytearray) -> Parsed | None:
    """Take the first complete packet off the front of `buf` (bytes before a header are
    dropped); None, with `buf` kept, while the packet is incomplete."""
    start = buf.find(HEADER)
    if start < 0:
        del buf[: max(0, len(buf) - 3)]  # keep a possible partial header
        return None
    del buf[:start]
    if len(buf) < 7:
        return None
    length = int.from_bytes(buf[5:7], "little")
    total = 7 + length
    if length < 3:  # not even INST + CRC: skip this header and look again
        del buf[:4]
        return parse_packet(buf)
    if len(buf) < total:
        return None
    raw = bytes(buf[:total])
    del buf[:total]
    crc_ok = crc16(raw[:-2]) == int.from_bytes(raw[-2:], "little")
    body = unstuff(raw[7:-2])
    return Parsed(raw[4], body[0], body[1:], crc_ok)


@dataclass
class EmulatedServo:
    """One X-series servo: control table + first-order dynamics evaluated at access time."""

    dxl_id: int
    clock: Clock
    model_number: int = 1020  # XM430-W350
    tau_s: float = 0.05  # position mode: time constant of the lag toward Goal Position
    rad_s_per_amp: float = 2.0  # current mode: velocity per ampere of Goal Current
    table: bytearray = field(default_factory=lambda: bytearray(_TABLE_SIZE))
    position_rad: float = 0.0
    velocity_rad_s: float = 0.0
    limit_refusals: int = 0  # goal writes refused as outside the limits (Data Limit error)
    statuses_sent: int = 0
    _t_ns: int = field(default=0, init=False, repr=False)
    drops_pending: int = 0  # fault injection: status packets still to drop
    corrupt_pending: int = 0  # ... and to send with a wrong CRC

    def __post_init__(self) -> None:
        t = self.table
        self._put(_MODEL_NUMBER, 2, self.model_number)
        self._put(_FIRMWARE, 1, 48)
        self._put(_ID, 1, self.dxl_id)
        self._put(_BAUD, 1, 3)  # 1 Mbaud
        self._put(_OPERATING_MODE, 1, MODE_POSITION)
        self._put(_CURRENT_LIMIT, 2, 1193)  # 3.2 A
        self._put(_VELOCITY_LIMIT, 4, 200)  # 45.8 rev/min, about the no-load speed
        self._put(_MAX_POSITION, 4, TICKS_PER_REV - 1)
        self._put(_MIN_POSITION, 4, 0)
        self._put(_STATUS_RETURN, 1, 2)
        self._put(_INPUT_VOLTAGE, 2, 120)  # 12.0 V
        self._put(_TEMPERATURE, 1, 30)
        t[_GOAL_POSITION : _GOAL_POSITION + 4] = self._ticks_now().to_bytes(4, "little")
        self._t_ns = self.clock.now_ns()

    # -- registers -----------------------------------------------------------------------------

    def _get(self, addr: int, size: int, *, signed: bool = False) -> int:
        return int.from_bytes(self.table[addr : addr + size], "little", signed=signed)

    def _put(self, addr: int, size: int, value: int) -> None:
        self.table[addr : addr + size] = value.to_bytes(size, "little", signed=value < 0)

    def peek(self, addr: int, size: int, *, signed: bool = False) -> int:
        """A register's value, as a test or Dynamixel Wizard would look at it."""
        return self._get(addr, size, signed=signed)

    def poke(self, addr: int, size: int, value: int) -> None:
        """Set a register directly (limits before a driver connects, as Dynamixel Wizard
        would), with no checks."""
        self._put(addr, size, value)

    @property
    def torque_on(self) -> bool:
        return self.table[_TORQUE_ENABLE] == 1

    @property
    def mode(self) -> int:
        return self.table[_OPERATING_MODE]

    @property
    def hardware_error(self) -> int:
        return self.table[_HARDWARE_ERROR]

    def _ticks_now(self) -> int:
        return round(self.position_rad / RAD_PER_TICK) + TICKS_PER_REV // 2

    # -- dynamics ------------------------------------------------------------------------------

    def advance(self) -> None:
        """Bring position and velocity up to `clock` under the current goal, mode and torque."""
        now = self.clock.now_ns()
        dt = max(0, now - self._t_ns) * 1e-9
        self._t_ns = max(now, self._t_ns)
        if not self.torque_on:
            self.velocity_rad_s = 0.0
        elif self.mode == MODE_POSITION:
            goal = (self._get(_GOAL_POSITION, 4, signed=True) - TICKS_PER_REV // 2) * RAD_PER_TICK
            err = (self.position_rad - goal) * math.exp(-dt / self.tau_s)
            self.position_rad = goal + err
            self.velocity_rad_s = -err / self.tau_s
        elif self.mode == MODE_CURRENT:
            amps = self._get(_GOAL_CURRENT, 2, signed=True) * A_PER_CURRENT_UNIT
            self.velocity_rad_s = self.rad_s_per_amp * amps
            self.position_rad += self.velocity_rad_s * dt
        self._put(_PRESENT_POSITION, 4, self._ticks_now())
        self._put(_PRESENT_VELOCITY, 4, round(self.velocity_rad_s / RAD_S_PER_VEL_UNIT))
        amps = self._get(_GOAL_CURRENT, 2, signed=True) * A_PER_CURRENT_UNIT
        present = amps if (self.torque_on and self.mode == MODE_CURRENT) else 0.0
        self._put(_PRESENT_CURRENT, 2, round(present / A_PER_CURRENT_UNIT))

    def read(self, addr: int, size: int) -> tuple[int, bytes]:
        """(error number, data) of a READ of `size` bytes at `addr`."""
        if addr + size > _TABLE_SIZE or size == 0:
            return ERR_ACCESS, b""
        self.advance()
        return 0, bytes(self.table[addr : addr + size])

    def write(self, addr: int, data: bytes) -> int:
        """Apply a WRITE as the servo would; returns the error number (0: done)."""
        end = addr + len(data)
        if addr < _ID or end > _RAM_WRITABLE_END or addr <= _HARDWARE_ERROR < end or not data:
            return ERR_ACCESS
        if addr < _EEPROM_END and self.torque_on:
            return ERR_ACCESS
        new = bytearray(self.table)
        new[addr:end] = data
        if _overlaps(addr, end, _GOAL_POSITION, 4) and self.mode == MODE_POSITION:
            goal = int.from_bytes(new[_GOAL_POSITION : _GOAL_POSITION + 4], "little", signed=True)
            if not self._get(_MIN_POSITION, 4) <= goal <= self._get(_MAX_POSITION, 4):
                self.limit_refusals += 1
                return ERR_DATA_LIMIT
        if _overlaps(addr, end, _GOAL_CURRENT, 2):
            amps = int.from_bytes(new[_GOAL_CURRENT : _GOAL_CURRENT + 2], "little", signed=True)
            if abs(amps) > self._get(_CURRENT_LIMIT, 2):
                self.limit_refusals += 1
                return ERR_DATA_LIMIT
        if _overlaps(addr, end, _TORQUE_ENABLE, 1) and new[_TORQUE_ENABLE] and self.hardware_error:
            return ERR_ACCESS  # a servo in alarm keeps its torque off until rebooted
        self.advance()  # the old goal acted until now
        self.table[addr:end] = data
        return 0

    def status(self, error: int, params: bytes = b"") -> bytes | None:
        """The status packet to send (None when a fault drops it); alert bit from the table."""
        if self.hardware_error:
            error |= ERR_ALERT
        if self.drops_pending > 0:
            self.drops_pending -= 1
            return None
        pkt = status_packet(self.dxl_id, error, params)
        if self.corrupt_pending > 0:
            self.corrupt_pending -= 1
            pkt = pkt[:-1] + bytes([pkt[-1] ^ 0xFF])
        self.statuses_sent += 1
        return pkt


def _overlaps(addr: int, end: int, reg: int, size: int) -> bool:
    return addr < reg + size and reg < end


class EmulatedBus:
    """Servos on one pseudo-terminal, served by a thread. Thread-safe fault injection.

    Example:
        with EmulatedBus([1, 2]) as bus:      # serving from here on
            driver = DynamixelDriver(port=bus.port, ids=[1, 2])
            bus.drop_status(2)                # the next status packet of servo 2 is lost
    """

    def __init__(
        self,
        ids: Iterable[int] = (1,),
        *,
        model_number: int = 1020,
        clock: Clock | None = None,
        tau_s: float = 0.05,
    ) -> None:
        self.clock: Clock = clock if clock is not None else MonotonicClock(spin_ns=0)
        self.servos = {
            i: EmulatedServo(i, self.clock, model_number=model_number, tau_s=tau_s)
            for i in ids
        }
        if not self.servos or not all(0 <= i < BROADCAST_ID for i in self.servos):
            raise ValueError(f"servo ids must be in [0, 253]: {sorted(self.servos)}")
        self._lock = threading.Lock()
        self._master, self._follower = os.openpty()
        tty.setraw(self._follower)
        self.port = os.ttyname(self._follower)
        self._wake_r, self._wake_w = os.pipe()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.packets = 0  # instruction packets received
        self.crc_errors = 0  # instruction packets whose CRC did not match

    # -- fault injection -----------------------------------------------------------------------

    def drop_status(self, dxl_id: int, n: int = 1) -> None:
        """The next `n` status packets of servo `dxl_id` are never sent."""
        with self._lock:
            self.servos[dxl_id].drops_pending += n

    def corrupt_crc(self, dxl_id: int, n: int = 1) -> None:
        """The next `n` status packets of servo `dxl_id` go out with a wrong CRC."""
        with self._lock:
            self.servos[dxl_id].corrupt_pending += n

    def set_hardware_error(self, dxl_id: int, bits: int) -> None:
        """Hardware Error Status of a servo (bit 0 input voltage, 2 overheating, 3 encoder,
        4 electrical shock, 5 overload). Non-zero: torque off and the alert bit in every
        status; zero clears it (a reboot)."""
        with self._lock:
            s = self.servos[dxl_id]
            s.advance()
            s.table[_HARDWARE_ERROR] = bits & 0xFF
            if bits:
                s.table[_TORQUE_ENABLE] = 0

    # -- serving -------------------------------------------------------------------------------

    def handle(self, pkt: Parsed) -> list[bytes]:
        """The status packets that answer one instruction packet (maybe none)."""
        with self._lock:
            return self._handle(pkt)

    def _handle(self, pkt: Parsed) -> list[bytes]:
        self.packets += 1
        servo = self.servos.get(pkt.dxl_id)
        if not pkt.crc_ok:
            self.crc_errors += 1
            reply = servo.status(ERR_CRC) if servo is not None else None
            return [reply] if reply is not None else []
        inst, p = pkt.instruction, pkt.params
        if inst == INST_PING:
            targets = sorted(self.servos) if pkt.dxl_id == BROADCAST_ID else [pkt.dxl_id]
            return self._replies(
                (i, 0, bytes(self.servos[i].table[_MODEL_NUMBER : _MODEL_NUMBER + 2])
                 + bytes([self.servos[i].table[_FIRMWARE]]))
                for i in targets
                if i in self.servos
            )
        if inst == INST_SYNC_READ:
            if pkt.dxl_id != BROADCAST_ID or len(p) < 4:
                return []
            addr, size = int.from_bytes(p[0:2], "little"), int.from_bytes(p[2:4], "little")
            return self._replies(
                (i, *self.servos[i].read(addr, size)) for i in p[4:] if i in self.servos
            )
        if inst == INST_SYNC_WRITE:
            if pkt.dxl_id != BROADCAST_ID or len(p) < 4:
                return []
            addr, size = int.from_bytes(p[0:2], "little"), int.from_bytes(p[2:4], "little")
            for k in range(4, len(p) - size, size + 1):
                target = self.servos.get(p[k])
                if target is not None:
                    target.write(addr, p[k + 1 : k + 1 + size])
            return []
        if servo is None and pkt.dxl_id != BROADCAST_ID:
            return []  # not ours: another servo on the bus (none here) would answer
        if inst == INST_READ:
            if servo is None:
                return []
            if len(p) != 4:
                return self._replies([(pkt.dxl_id, ERR_DATA_LENGTH, b"")])
            addr, size = int.from_bytes(p[0:2], "little"), int.from_bytes(p[2:4], "little")
            return self._replies([(pkt.dxl_id, *servo.read(addr, size))])
        if inst == INST_WRITE:
            if len(p) < 3:
                return self._replies([(pkt.dxl_id, ERR_DATA_LENGTH, b"")]) if servo else []
            addr = int.from_bytes(p[0:2], "little")
            if servo is None:  # broadcast WRITE: every servo, no answer
                for each in self.servos.values():
                    each.write(addr, p[2:])
                return []
            return self._replies([(pkt.dxl_id, servo.write(addr, p[2:]), b"")])
        return self._replies([(pkt.dxl_id, ERR_INSTRUCTION, b"")]) if servo else []

    def _replies(self, answers: Iterable[tuple[int, int, bytes]]) -> list[bytes]:
        out = []
        for dxl_id, error, data in answers:
            pkt = self.servos[dxl_id].status(error, data)
            if pkt is not None:
                out.append(pkt)
        return out

    def start(self) -> EmulatedBus:
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name="dxl-emu", daemon=True)
            self._thread.start()
        return self

    def _serve(self) -> None:
        buf = bytearray()
        while not self._stop.is_set():
            ready, _, _ = select.select([self._master, self._wake_r], [], [])
            if self._wake_r in ready:
                return
            try:
                chunk = os.read(self._master, 4096)
            except OSError:  # EIO: nobody holds the follower side (cannot happen while open)
                return
            buf += chunk
            while (pkt := parse_packet(buf)) is not None:
                for reply in self.handle(pkt):
                    self._send(reply)

    def _send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._master, view)
            view = view[n:]

    def close(self) -> None:
        """Stop serving and close the pseudo-terminal; idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(2.0)
        for fd in (self._master, self._follower, self._wake_r, self._wake_w):
            os.close(fd)

    def __enter__(self) -> EmulatedBus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the command line ----------------------------------------------------------------------------


def _ids(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def bench(
    counts: Sequence[int] = (2, 6), *, n: int = 1000, baud: int = 1_000_000
) -> list[dict[str, float]]:
    """p50/p99 of one `DynamixelDriver.read()` (a sync read) and one `write()` (a sync write)
    against an emulated bus served by a child process (its own interpreter, as a real bus is
    its own hardware). Returns one row per servo count, times in microseconds."""
    import subprocess

    import numpy as np

    from hw_bridge.dynamixel import DynamixelDriver  # the driver side needs dynamixel_sdk

    rows = []
    for count in counts:
        ids = list(range(1, count + 1))
        child = subprocess.Popen(
            [sys.executable, "-m", "hw_bridge.dxl_emu", "--ids", ",".join(map(str, ids))],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            assert child.stdout is not None
            port = child.stdout.readline().strip()
            driver = DynamixelDriver(port=port, ids=ids, baud=baud)
            driver.reset()
            hold = driver.spec().action_low * 0.0
            reads, writes = np.empty(n), np.empty(n)
            clock = driver.clock
            for k in range(n):
                t0 = clock.now_ns()
                state, _ = driver.read()
                t1 = clock.now_ns()
                driver.write(hold + state[:count])
                t2 = clock.now_ns()
                reads[k], writes[k] = (t1 - t0) / 1e3, (t2 - t1) / 1e3
            counters = driver.counters()
            driver.close()
        finally:
            child.terminate()
            child.wait(5.0)
        rows.append({
            "servos": count,
            "read_p50_us": float(np.percentile(reads, 50)),
            "read_p99_us": float(np.percentile(reads, 99)),
            "write_p50_us": float(np.percentile(writes, 50)),
            "write_p99_us": float(np.percentile(writes, 99)),
            "comm_errors": counters["comm_errors"],
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hw_bridge.dxl_emu",
        description="An emulated Dynamixel protocol 2.0 bus on a pseudo-terminal.",
    )
    ap.add_argument("--ids", default="1", help="servo ids, comma separated (default: 1)")
    ap.add_argument("--model", type=int, default=1020, help="model number (default: 1020, "
                    "XM430-W350)")
    ap.add_argument("--bench", action="store_true", help="measure DynamixelDriver sync "
                    "read/write latency on an emulated bus of 2 and 6 servos, then exit")
    ap.add_argument("-n", type=int, default=1000, help="--bench: samples per servo count")
    args = ap.parse_args(argv)
    if args.bench:
        print("DynamixelDriver on an emulated bus (pty: no baud-rate timing), 1 Mbaud set")
        print(f"{'servos':>6} {'read p50':>9} {'read p99':>9} {'write p50':>10} "
              f"{'write p99':>10}  (us, n={args.n})")
        for row in bench(n=args.n):
            print(f"{row['servos']:>6.0f} {row['read_p50_us']:>9.0f} {row['read_p99_us']:>9.0f} "
                  f"{row['write_p50_us']:>10.0f} {row['write_p99_us']:>10.0f}"
                  + (f"  comm_errors={row['comm_errors']:.0f}" if row["comm_errors"] else ""))
        return 0
    try:
        ids = _ids(args.ids)
        bus = EmulatedBus(ids, model_number=args.model)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background
        signal.signal(sig, lambda *_: stop.set())
    with bus:
        print(bus.port, flush=True)
        print(f"serving servos {ids} (model {args.model}); Ctrl-C to stop", file=sys.stderr)
        while not stop.wait(0.5):
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
