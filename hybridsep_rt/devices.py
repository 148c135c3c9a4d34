"""Audio devices: listing inputs and outputs (loopback sources marked) and resolving a device name to open.

Two kinds of devices
--------------------
* **PortAudio devices** (through ``sounddevice``): every input and output of every host API (ALSA on Linux,
  WASAPI/MME/DirectSound on Windows, Core Audio on macOS). Selected by index (``3``), exact name, or a
  unique part of the name (``"USB"``).
* **PulseAudio sources and sinks** (Linux, PulseAudio or PipeWire's pulse server, listed with ``pactl``).
  PortAudio has no PulseAudio host API: it reaches the sound server through one ALSA device, ``pulse``, which
  opens the server's *default* source and sink. Every source and sink is therefore listed by its server name
  (``pulse:daw.monitor``, ``pulse:headphones``) and opened as the ``pulse`` ALSA device with the environment
  variables ``PULSE_SOURCE`` / ``PULSE_SINK`` naming it. The ALSA pulse plugin creates a new server
  connection each time a stream is opened, and libpulse reads these variables when it connects, so setting
  them in ``os.environ`` just before opening a stream selects the device (no PortAudio re-initialisation is
  needed): see :func:`pulse_environment`.

Loopback: capturing what is being played
----------------------------------------
* Linux: every PulseAudio/PipeWire sink has a ``.monitor`` source that records what is played into it.
  ``pulse:SINK.monitor`` captures a sink; a virtual sink for a DAW or a player is a null sink::

      pactl load-module module-null-sink sink_name=daw sink_properties=device.description=DAW

  (point the player at "DAW", then ``hybridsep stream --input pulse:daw.monitor --output pulse:SPEAKERS``).
* Windows: PortAudio builds with WASAPI loopback (PortAudio after 19.7, pull request #672) list, for every
  output, an input named ``"<output name> [Loopback]"`` that captures it; it is marked as loopback. Builds
  without it: enable "Stereo Mix" in the recording devices, or install a virtual cable (VB-Audio Cable: play
  into "CABLE Input", capture "CABLE Output").
* macOS: Core Audio has no loopback capture; install a virtual device such as BlackHole (``brew install
  blackhole-2ch``), make it the output of the player (or a Multi-Output Device with the speakers), and capture
  the "BlackHole 2ch" input. Virtual devices are marked as loopback by name (BlackHole, Soundflower, Loopback).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, replace

__all__ = [
    "INPUT",
    "OUTPUT",
    "PULSE_PREFIX",
    "STANDARD_SAMPLE_RATES",
    "AudioDevice",
    "DeviceError",
    "PulseDevice",
    "device_present",
    "find_device",
    "format_devices",
    "list_devices",
    "portaudio_devices",
    "pulse_available",
    "pulse_devices",
    "pulse_environment",
    "reinitialise_portaudio",
]

INPUT = "input"
OUTPUT = "output"
PULSE_PREFIX = "pulse:"  # names of PulseAudio sources and sinks as this module lists them
PULSE_ALSA_DEVICES = ("pulse", "default")  # ALSA devices that lead to the sound server, in order of preference
# ALSA devices that are a sound server: they take any rate, and probing them would open server streams (which
# can make the server switch an idle sink to another rate), so they are not probed.
SERVER_ALSA_DEVICES = ("pulse", "default", "pipewire", "jack")
# Sample rates probed for each PortAudio device (the common rates of audio hardware and files).
STANDARD_SAMPLE_RATES = (8000, 16000, 22050, 32000, 44100, 48000, 88200, 96000)
PACTL_TIMEOUT_SECONDS = 5.0
# Parts of device names (lower case) that mark an input as a loopback capture of an output: PortAudio's WASAPI
# loopback inputs ("<output> [Loopback]"), ALSA's snd-aloop card ("Loopback"), macOS virtual devices
# (BlackHole, Soundflower, Rogue Amoeba's Loopback), Windows "Stereo Mix" and VB-Audio Cable's capture end.
LOOPBACK_NAME_PARTS = ("loopback", "blackhole", "soundflower", "stereo mix", "cable output", "monitor of")


class DeviceError(RuntimeError):
    """No such device, an ambiguous name, or no audio devices at all."""


@dataclass(frozen=True)
class AudioDevice:
    """An input or an output that a stream can open.

    Attributes:
        kind: ``INPUT`` or ``OUTPUT``.
        name: how to select it (``--input`` / ``--output``): the PortAudio name, or ``pulse:NAME``.
        description: a human-readable label.
        host_api: "ALSA", "Windows WASAPI", "Core Audio", ... or "PulseAudio".
        channels: the most channels it opens with.
        default_samplerate: its native (or default) rate in Hz.
        samplerates: standard rates it accepts (empty when not probed; the sound server converts any rate
            for PulseAudio devices).
        loopback: it captures what an output plays (a monitor source, WASAPI loopback, a virtual device).
        index: the PortAudio device index to open (for PulseAudio devices, that of the ``pulse`` ALSA device;
            None when PortAudio cannot reach the sound server).
        pulse_name: the PulseAudio source or sink name, or None for a plain PortAudio device.
    """

    kind: str
    name: str
    description: str
    host_api: str
    channels: int
    default_samplerate: int
    samplerates: tuple[int, ...] = ()
    loopback: bool = False
    index: int | None = None
    pulse_name: str | None = None

    @property
    def is_pulse(self) -> bool:
        return self.pulse_name is not None


@dataclass(frozen=True)
class PulseDevice:
    """A PulseAudio source or sink as ``pactl list sources|sinks`` describes it."""

    kind: str  # INPUT (source) or OUTPUT (sink)
    name: str
    description: str
    channels: int
    samplerate: int
    monitor_of: str | None  # for a monitor source: the sink it captures


# ---------------------------------------------------------------------------------------------- PulseAudio


def _pactl(*args: str) -> str | None:
    """Output of ``pactl ARGS`` in the C locale (field names untranslated), or None when it fails."""
    pactl = shutil.which("pactl")
    if pactl is None:
        return None
    try:
        result = subprocess.run([pactl, *args], capture_output=True, text=True, check=False, timeout=PACTL_TIMEOUT_SECONDS,
                                env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def pulse_available() -> bool:
    """True when ``pactl`` is installed and a PulseAudio (or PipeWire pulse) server answers."""
    return _pactl("info") is not None


def _parse_sample_spec(spec: str) -> tuple[int, int]:
    """"float32le 2ch 44100Hz" -> (channels, rate); (0, 0) when unreadable."""
    channels = rate = 0
    for part in spec.split():
        if part.endswith("ch") and part[:-2].isdigit():
            channels = int(part[:-2])
        elif part.endswith("Hz") and part[:-2].isdigit():
            rate = int(part[:-2])
    return channels, rate


def _parse_pactl_list(text: str, kind: str) -> list[PulseDevice]:
    """Blocks of ``pactl list sources|sinks`` (C locale) -> devices. Only the top-level "Key: value" lines of
    each block (one tab of indent) are read."""
    devices = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            if line.startswith("\t") and not line.startswith("\t\t") and ":" in line:
                key, _, value = line.strip().partition(":")
                fields[key.strip()] = value.strip()
        if "Name" not in fields:
            continue
        channels, rate = _parse_sample_spec(fields.get("Sample Specification", ""))
        monitor_of = fields.get("Monitor of Sink")
        devices.append(PulseDevice(kind, fields["Name"], fields.get("Description", fields["Name"]), channels, rate,
                                   None if monitor_of in (None, "", "n/a") else monitor_of))
    return devices


def pulse_devices() -> list[PulseDevice]:
    """The sound server's sources (inputs) and sinks (outputs); empty when there is no server or no pactl."""
    devices = []
    for what, kind in (("sources", INPUT), ("sinks", OUTPUT)):
        text = _pactl("list", what)
        if text:
            devices += _parse_pactl_list(text, kind)
    return devices


def pulse_names(kind: str) -> set[str] | None:
    """Names of the server's sources (``INPUT``) or sinks (``OUTPUT``), from the short listing; None when the
    server cannot be asked."""
    text = _pactl("list", "short", "sources" if kind == INPUT else "sinks")
    if text is None:
        return None
    return {line.split("\t")[1] for line in text.splitlines() if line.count("\t") >= 1}


def pulse_environment(input_device: AudioDevice | None, output_device: AudioDevice | None) -> dict[str, str]:
    """The environment variables that point the ALSA ``pulse`` device at the chosen source and sink.

    Set them in ``os.environ`` before opening the stream (the ALSA pulse plugin reads them through libpulse
    when the stream connects to the server).
    """
    environment = {}
    if input_device is not None and input_device.is_pulse:
        environment["PULSE_SOURCE"] = input_device.pulse_name
    if output_device is not None and output_device.is_pulse:
        environment["PULSE_SINK"] = output_device.pulse_name
    return environment


# ---------------------------------------------------------------------------------------------- PortAudio


def _sounddevice():
    import sounddevice

    return sounddevice


def reinitialise_portaudio() -> None:
    """Make PortAudio scan the devices again (after one was plugged in or came back). No stream may be open:
    raises DeviceError while a stream whose driver is stuck is still closing (terminating PortAudio could hang)."""
    from hybridsep_rt.stream import streams_closing

    if streams_closing():
        raise DeviceError("an audio stream is still closing (its driver has not returned), so PortAudio cannot "
                          "scan the devices now; try again in a moment")
    sd = _sounddevice()
    sd._terminate()
    sd._initialize()


def _is_wasapi_loopback(sd, index: int) -> bool:
    """PortAudio's own answer where the library has ``PaWasapi_IsLoopback`` (Windows builds with it)."""
    try:
        return bool(sd._lib.PaWasapi_IsLoopback(index) == 1)
    except (AttributeError, TypeError):
        return False


def _looks_like_loopback(name: str) -> bool:
    lowered = name.lower()
    return any(part in lowered for part in LOOPBACK_NAME_PARTS)


def _probe_rates(sd, kind: str, index: int, channels: int) -> tuple[int, ...]:
    check = sd.check_input_settings if kind == INPUT else sd.check_output_settings
    rates = []
    for rate in STANDARD_SAMPLE_RATES:
        try:
            check(device=index, channels=min(channels, 2), dtype="float32", samplerate=rate)
        except Exception:  # PortAudio raises PortAudioError or ValueError for an unsupported setting
            continue
        rates.append(rate)
    return tuple(rates)


def portaudio_devices(probe_rates: bool = False) -> list[AudioDevice]:
    """Every PortAudio input and output (a device with both is listed twice, once per kind).

    ``probe_rates`` also asks PortAudio which of ``STANDARD_SAMPLE_RATES`` each device accepts (this opens
    nothing but can take a moment on some systems).
    """
    sd = _sounddevice()
    host_apis = sd.query_hostapis()
    windows = os.name == "nt"
    devices = []
    for info in sd.query_devices():
        index = info["index"]
        host_api = host_apis[info["hostapi"]]["name"]
        for kind, key in ((INPUT, "max_input_channels"), (OUTPUT, "max_output_channels")):
            channels = int(info[key])
            if channels <= 0:
                continue
            loopback = kind == INPUT and (_looks_like_loopback(info["name"])
                                          or (windows and _is_wasapi_loopback(sd, index)))
            server = host_api == "ALSA" and info["name"] in SERVER_ALSA_DEVICES
            rates = _probe_rates(sd, kind, index, channels) if probe_rates and not server else ()
            devices.append(AudioDevice(kind, info["name"], info["name"], host_api, channels,
                                       int(info["default_samplerate"]), rates, loopback, index))
    return devices


def _pulse_alsa_index(portaudio: list[AudioDevice]) -> int | None:
    """Index of the ALSA device that reaches the sound server (``pulse``, else ``default``)."""
    for name in PULSE_ALSA_DEVICES:
        for device in portaudio:
            if device.host_api == "ALSA" and device.name == name:
                return device.index
    return None


def list_devices(probe_rates: bool = False) -> list[AudioDevice]:
    """All inputs and outputs: PortAudio's, then the PulseAudio sources and sinks (monitors marked loopback)."""
    portaudio = portaudio_devices(probe_rates)
    pulse_index = _pulse_alsa_index(portaudio)
    devices = list(portaudio)
    for pulse in pulse_devices():
        devices.append(AudioDevice(pulse.kind, PULSE_PREFIX + pulse.name, pulse.description, "PulseAudio",
                                   pulse.channels, pulse.samplerate, (), pulse.monitor_of is not None
                                   or pulse.name.endswith(".monitor"), pulse_index, pulse.name))
    return devices


# ---------------------------------------------------------------------------------------------- selection


def _default_device(devices: list[AudioDevice], kind: str) -> AudioDevice:
    sd = _sounddevice()
    try:
        default = sd.query_devices(kind=kind)["index"]
    except (ValueError, sd.PortAudioError):  # sounddevice: "No input device available" and the like
        default = None
    for device in devices:
        if device.kind == kind and device.index == default and not device.is_pulse:
            return device
    raise DeviceError(f"there is no default {kind} device; name one (see `hybridsep devices`)")


def find_device(name: str | None, kind: str, devices: list[AudioDevice] | None = None) -> AudioDevice:
    """The device ``name`` selects, of ``kind`` (``INPUT`` or ``OUTPUT``).

    ``name`` may be None (the system default), a PortAudio index ("3"), ``pulse:NAME`` (a PulseAudio source
    or sink), an exact device name (PulseAudio names count too: "daw.monitor"), or a part of one PortAudio
    device's name (case-insensitive). Raises :class:`DeviceError` naming the candidates otherwise.
    """
    devices = list_devices() if devices is None else devices
    candidates = [d for d in devices if d.kind == kind]
    if not candidates:
        raise DeviceError(f"no audio {kind} devices found (is a sound server running? on a machine without a "
                          f"sound card, start PulseAudio and create a null sink; see `hybridsep devices`)")
    if name is None:
        return _default_device(candidates, kind)
    text = name.strip()
    if text.isdigit():
        for device in candidates:
            if device.index == int(text) and not device.is_pulse:
                return device
        raise DeviceError(f"no {kind} device with index {text}; `hybridsep devices` lists them")
    if text.startswith(PULSE_PREFIX):
        chosen = [d for d in candidates if d.name == text]
    else:
        chosen = [d for d in candidates if d.name == text and not d.is_pulse]
        chosen = chosen or [d for d in candidates if d.pulse_name == text]
        chosen = chosen or [d for d in candidates if not d.is_pulse and text.lower() in d.name.lower()]
    if len(chosen) > 1:
        names = ", ".join(repr(d.name) for d in chosen)
        raise DeviceError(f"{kind} device {name!r} is ambiguous: it matches {names}")
    if not chosen:
        raise DeviceError(f"no {kind} device {name!r}; the {kind}s are: "
                          f"{', '.join(repr(d.name) for d in candidates)}")
    device = chosen[0]
    if device.is_pulse and device.index is None:
        raise DeviceError(f"{device.name} is a PulseAudio {kind} but PortAudio has no ALSA 'pulse' device to reach "
                          f"the sound server (install libasound2-plugins)")
    return device


def device_present(device: AudioDevice) -> bool | None:
    """Whether a PulseAudio source or sink still exists (None: cannot tell, e.g. a plain PortAudio device)."""
    if not device.is_pulse:
        return None
    names = pulse_names(device.kind)
    return None if names is None else device.pulse_name in names


def refreshed(device: AudioDevice) -> AudioDevice:
    """``device`` with its PortAudio index looked up again (indices change when PortAudio re-scans)."""
    devices = list_devices()
    if device.is_pulse:
        return replace(device, index=_pulse_alsa_index([d for d in devices if not d.is_pulse]))
    return find_device(device.name, device.kind, devices)


# ---------------------------------------------------------------------------------------------- listing


def _rates_text(device: AudioDevice) -> str:
    if device.is_pulse or (device.host_api == "ALSA" and device.name in SERVER_ALSA_DEVICES):
        return f"{device.default_samplerate} Hz (any rate, converted by the sound server)"
    if device.samplerates:
        return f"{device.default_samplerate} Hz default; " + ", ".join(str(r) for r in device.samplerates)
    return f"{device.default_samplerate} Hz"


def format_devices(devices: list[AudioDevice]) -> str:
    """The ``hybridsep devices`` listing: inputs, then outputs; loopback inputs marked ``[loopback]``."""
    if not devices:
        return ("No audio devices found. On Linux, start a sound server (PulseAudio or PipeWire); on a machine\n"
                "without a sound card a null sink gives a virtual device:\n"
                "  pulseaudio --start && pactl load-module module-null-sink sink_name=daw\n")
    lines = []
    for kind, title in ((INPUT, "Inputs"), (OUTPUT, "Outputs")):
        listed = [d for d in devices if d.kind == kind]
        lines.append(f"{title}:")
        if not listed:
            lines.append(f"  (no {kind} devices)")
        for device in listed:
            where = f"[{device.index}]" if not device.is_pulse else "     "
            mark = "  [loopback]" if device.loopback else ""
            description = "" if device.description == device.name else f"  \"{device.description}\""
            lines.append(f"  {where:>5} {device.name}{description}  ({device.host_api}, {device.channels} ch, "
                         f"{_rates_text(device)}){mark}")
        lines.append("")
    lines.append("Select a device with --input / --output by index, name, part of a name, or pulse:NAME.")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- command


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print the devices as JSON")
    parser.add_argument("--no-probe", action="store_true",
                        help="do not ask PortAudio which standard sample rates each device accepts")


def run(args) -> int:
    import json
    import sys
    from dataclasses import asdict

    try:
        devices = list_devices(probe_rates=not args.no_probe)
    except OSError as e:  # sounddevice raises OSError when the PortAudio library is missing
        print(f"hybridsep devices: error: cannot load PortAudio ({e}); install libportaudio2", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([asdict(d) for d in devices], indent=2))
    else:
        sys.stdout.write(format_devices(devices))
    return 0 if devices else 1
