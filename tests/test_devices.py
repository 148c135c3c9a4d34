"""Device listing and selection (hybridsep_rt/devices.py, `hybridsep devices`).

The listing test runs on real devices: null sinks of a private PulseAudio server (tests/pulse.py).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from hybridsep_rt import devices
from hybridsep_rt.devices import INPUT, OUTPUT, AudioDevice, DeviceError, find_device, format_devices
from tests.pulse import pulse_server

PACTL_SOURCES = """Source #3
\tState: IDLE
\tName: daw.monitor
\tDescription: Monitor of DAW
\tDriver: module-null-sink.c
\tSample Specification: float32le 2ch 48000Hz
\tMonitor of Sink: daw
\tProperties:
\t\tdevice.description = "Monitor of DAW"
\t\tdevice.class = "monitor"

Source #4
\tState: RUNNING
\tName: alsa_input.usb-mic
\tDescription: USB Microphone
\tSample Specification: s16le 1ch 44100Hz
\tMonitor of Sink: n/a
"""


def device(kind, name, index=None, pulse_name=None, channels=2, loopback=False) -> AudioDevice:
    host_api = "PulseAudio" if pulse_name else "ALSA"
    return AudioDevice(kind, name, name, host_api, channels, 44100, (), loopback, index, pulse_name)


DEVICES = [
    device(INPUT, "pulse", 0), device(OUTPUT, "pulse", 0),
    device(INPUT, "USB Audio Device: Line (hw:1,0)", 2), device(OUTPUT, "USB Audio Device: Line (hw:1,0)", 2),
    device(INPUT, "USB Headset: Mic (hw:2,0)", 3),
    device(INPUT, "pulse:daw.monitor", 0, "daw.monitor", loopback=True), device(OUTPUT, "pulse:daw", 0, "daw"),
]


def test_pactl_listing_is_parsed_and_monitors_are_found():
    parsed = devices._parse_pactl_list(PACTL_SOURCES, INPUT)
    assert [(d.name, d.description, d.channels, d.samplerate, d.monitor_of) for d in parsed] == [
        ("daw.monitor", "Monitor of DAW", 2, 48000, "daw"),
        ("alsa_input.usb-mic", "USB Microphone", 1, 44100, None),
    ]


@pytest.mark.parametrize("name, loopback", [
    ("Speakers (Realtek High Definition Audio) [Loopback]", True),  # PortAudio WASAPI loopback input
    ("BlackHole 2ch", True),
    ("CABLE Output (VB-Audio Virtual Cable)", True),
    ("Stereo Mix (Realtek Audio)", True),
    ("Loopback: PCM (hw:3,0)", True),  # ALSA snd-aloop
    ("MacBook Pro Microphone", False),
    ("USB Headset: Mic (hw:2,0)", False),
])
def test_loopback_inputs_are_recognised_by_name(name, loopback):
    assert devices._looks_like_loopback(name) is loopback


def test_find_device_by_index_pulse_name_exact_name_and_part():
    assert find_device("2", INPUT, DEVICES).name.startswith("USB Audio")
    assert find_device("pulse:daw.monitor", INPUT, DEVICES).pulse_name == "daw.monitor"
    assert find_device("daw.monitor", INPUT, DEVICES).pulse_name == "daw.monitor"  # bare server names work too
    assert find_device("pulse", OUTPUT, DEVICES).index == 0  # an exact name beats the pulse:... names
    assert find_device("headset", INPUT, DEVICES).index == 3  # a part of a name, any case
    assert find_device("pulse:daw", OUTPUT, DEVICES).pulse_name == "daw"


def test_find_device_explains_what_is_wrong():
    with pytest.raises(DeviceError, match="ambiguous.*USB Audio.*USB Headset"):
        find_device("usb", INPUT, DEVICES)
    with pytest.raises(DeviceError, match="no output device 'pulse:daw.monitor'.*'pulse:daw'"):
        find_device("pulse:daw.monitor", OUTPUT, DEVICES)  # a source is no output
    with pytest.raises(DeviceError, match="no input device with index 9"):
        find_device("9", INPUT, DEVICES)
    with pytest.raises(DeviceError, match="no audio input devices found"):
        find_device("anything", INPUT, [d for d in DEVICES if d.kind == OUTPUT])


def test_no_devices_gives_a_clear_message(monkeypatch, capsys):
    text = format_devices([])
    assert "No audio devices found" in text and "module-null-sink" in text
    monkeypatch.setattr(devices, "list_devices", lambda probe_rates=False: [])
    assert devices.run(SimpleNamespace(json=False, no_probe=True)) == 1
    assert "No audio devices found" in capsys.readouterr().out


def test_pulse_environment_names_the_source_and_the_sink():
    source = find_device("pulse:daw.monitor", INPUT, DEVICES)
    sink = find_device("pulse:daw", OUTPUT, DEVICES)
    hardware = find_device("2", OUTPUT, DEVICES)
    assert devices.pulse_environment(source, sink) == {"PULSE_SOURCE": "daw.monitor", "PULSE_SINK": "daw"}
    assert devices.pulse_environment(source, hardware) == {"PULSE_SOURCE": "daw.monitor"}


def hybridsep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hybridsep_rt.cli", *args], capture_output=True, text=True,
                          timeout=60, check=False)


def test_devices_command_lists_null_sink_monitors_as_loopback():
    server = pulse_server()
    names = [f"hsdev{os.getpid()}_{side}" for side in ("a", "b")]
    sinks = [server.add_null_sink(name, 44100, 2, description=f"Test{i}") for i, name in enumerate(names)]
    try:
        result = hybridsep("devices")
        assert result.returncode == 0, result.stderr
        text = result.stdout
        inputs, outputs = text.split("Outputs:")
        for sink in sinks:
            monitor_line = next(line for line in inputs.splitlines() if f"pulse:{sink.monitor} " in line)
            assert monitor_line.rstrip().endswith("[loopback]"), monitor_line
            assert "2 ch" in monitor_line and "44100 Hz" in monitor_line
            sink_line = next(line for line in outputs.splitlines() if f"pulse:{sink.name} " in line)
            assert "[loopback]" not in sink_line
        assert "pulse" in {line.split()[1] for line in inputs.splitlines() if line.strip().startswith("[")}

        listed = json.loads(hybridsep("devices", "--json", "--no-probe").stdout)
        by_name = {(d["kind"], d["name"]): d for d in listed}
        for sink in sinks:
            monitor = by_name[(INPUT, f"pulse:{sink.monitor}")]
            assert monitor["loopback"] is True and monitor["pulse_name"] == sink.monitor
            assert monitor["default_samplerate"] == 44100 and monitor["channels"] == 2
            assert by_name[(OUTPUT, f"pulse:{sink.name}")]["loopback"] is False
    finally:
        for sink in sinks:
            server.remove(sink)
