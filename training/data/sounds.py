"""Procedural sound clips synthesised with numpy and scipy: sirens, beeping alarms, engines,
rain, wind, telephone rings and ticking clocks.

Each sound has a `describe` that draws its parameters and captions, and a `render` that turns
them into a wave of CLIP_SAMPLES, using only the random stream seeded by `render_seed`.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import signal
from scipy.interpolate import CubicSpline

from training.data.generation import CLIP_SAMPLES, CLIP_SECONDS, SAMPLE_RATE, draw_captions, pick

def _time() -> np.ndarray:
    return np.arange(CLIP_SAMPLES) / SAMPLE_RATE


def _slow_curve(rng: np.random.Generator, points_per_second: float) -> np.ndarray:
    """A smooth random curve over the clip, about N(0, 1), varying at the given rate."""
    count = int(CLIP_SECONDS * points_per_second) + 4
    knots = np.linspace(-1.0, CLIP_SECONDS + 1.0, count)
    return CubicSpline(knots, rng.standard_normal(count))(_time())


def _harmonic_tone(frequency: np.ndarray, amplitudes: Sequence[float]) -> np.ndarray:
    """Sum of harmonics k=1.. of a time-varying frequency (Hz per sample), below 0.45*rate."""
    phase = 2 * np.pi * np.cumsum(frequency) / SAMPLE_RATE
    top = float(np.max(frequency))
    wave = np.zeros_like(phase)
    for k, amplitude in enumerate(amplitudes, start=1):
        if k * top < 0.45 * SAMPLE_RATE:
            wave += amplitude * np.sin(k * phase)
    return wave


def _gate(spans: Sequence[tuple[float, float]], ramp_seconds: float = 0.004) -> np.ndarray:
    """An on/off envelope over the clip, on during each (start, end) in seconds, with short ramps."""
    envelope = np.zeros(CLIP_SAMPLES)
    for start, end in spans:
        a, b = int(start * SAMPLE_RATE), min(int(end * SAMPLE_RATE), CLIP_SAMPLES)
        if a < b:
            envelope[a:b] = 1.0
    ramp = max(1, int(ramp_seconds * SAMPLE_RATE))
    return np.convolve(envelope, np.ones(ramp) / ramp, mode="same")


def _filter(wave: np.ndarray, band: tuple[float | None, float | None], order: int = 2) -> np.ndarray:
    """Butterworth filter: (low, None) high-pass, (None, high) low-pass, (low, high) band-pass."""
    low, high = band
    if low is not None and high is not None:
        sos = signal.butter(order, [low, high], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    elif low is not None:
        sos = signal.butter(order, low, btype="highpass", fs=SAMPLE_RATE, output="sos")
    else:
        sos = signal.butter(order, high, btype="lowpass", fs=SAMPLE_RATE, output="sos")
    return signal.sosfilt(sos, wave)


def _decaying_partials(partials: Sequence[tuple[float, float, float]], seconds: float) -> np.ndarray:
    """An impulse response: sum of sines (frequency Hz, amplitude, decay time s)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return sum(amplitude * np.exp(-t / decay) * np.sin(2 * np.pi * frequency * t)
               for frequency, amplitude, decay in partials)


def _room(wave: np.ndarray, rng: np.random.Generator, wet: float, rt60: float) -> np.ndarray:
    """Add a diffuse room: noise with an exponential decay reaching -60 dB at `rt60` seconds."""
    t = np.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    response = rng.standard_normal(t.shape[0]) * np.exp(-6.9 * t / rt60)  # ln(1000) = 6.9: -60 dB
    response = _filter(response, (None, 6000.0)) / np.sqrt(np.sum(response**2))
    reverberant = signal.fftconvolve(wave, response)[: wave.shape[0]]
    return wave + wet * reverberant


def _siren(params: dict, rng: np.random.Generator) -> np.ndarray:
    t = _time()
    low, high, period = params["low"], params["high"], params["period"]
    if params["style"] == "wail":
        sweep = 0.5 - 0.5 * np.cos(2 * np.pi * t / period + params["phase"])
    elif params["style"] == "yelp":
        sweep = ((t / period + params["phase"]) % 1.0) ** 0.7
    else:  # hi-lo: two tones alternating, with a short glide between them
        sweep = np.convolve((np.floor(t / period + params["phase"]) % 2), np.ones(441) / 441, mode="same")
    frequency = low + (high - low) * sweep
    loudness = np.ones_like(t)
    if params["passing"]:
        centre, width = params["centre"], params["width"]
        frequency = frequency * (1.0 + 0.03 * np.tanh((centre - t) / (0.3 * width)))  # Doppler shift
        loudness = 0.15 + np.exp(-0.5 * ((t - centre) / width) ** 2)
    tone = _harmonic_tone(frequency, [1.0, 0.15, 0.33, 0.08, 0.2, 0.04, 0.14])
    return _room(tone * loudness, rng, params["wet"], 1.2)


def _describe_siren(rng: np.random.Generator) -> tuple[dict, list[str]]:
    style = pick(rng, ("wail", "yelp", "hi-lo"))
    if style == "hi-lo":
        low = float(rng.uniform(400, 480))
        high, period = low * 4 / 3, float(rng.uniform(0.4, 0.8))  # a fourth apart
    else:
        low, high = float(rng.uniform(550, 800)), float(rng.uniform(1100, 1600))
        period = float(rng.uniform(2.5, 5.0) if style == "wail" else rng.uniform(0.15, 0.35))
    passing = bool(rng.random() < 0.5)
    params = {"style": style, "low": low, "high": high, "period": period, "phase": float(rng.uniform(0, 6)),
              "passing": passing, "centre": float(rng.uniform(3, 7)), "width": float(rng.uniform(1.5, 3.0)),
              "wet": float(rng.uniform(0.1, 0.8))}
    kind = {"wail": ("a wailing siren", "an emergency siren rising and falling"),
            "yelp": ("a police siren yelping", "a fast warbling siren"),
            "hi-lo": ("a two-tone siren", "an ambulance siren alternating between two notes")}[style]
    where = ("a siren passing by", "a siren approaching and fading away") if passing else (
        "a loud siren sounding", "a siren blaring continuously")
    return params, draw_captions(kind + where, {}, rng)


def _alarm(params: dict, rng: np.random.Generator) -> np.ndarray:
    spans, start = [], params["start"]
    while start < CLIP_SECONDS:
        for _ in range(params["group"]):
            spans.append((start, start + params["beep"]))
            start += params["beep"] + params["inner_gap"]
        start += params["outer_gap"]
    frequency = np.full(CLIP_SAMPLES, params["frequency"])
    harmonics = [1.0, 0.0, 0.3, 0.0, 0.15] if params["square"] else [1.0]
    return _room(_harmonic_tone(frequency, harmonics) * _gate(spans), rng, params["wet"], 0.5)


def _describe_alarm(rng: np.random.Generator) -> tuple[dict, list[str]]:
    high = bool(rng.random() < 0.5)
    params = {"frequency": float(rng.uniform(2600, 3600) if high else rng.uniform(800, 1600)),
              "square": bool(rng.random() < 0.5), "group": int(rng.integers(1, 5)),
              "beep": float(rng.uniform(0.06, 0.25)), "inner_gap": float(rng.uniform(0.06, 0.2)),
              "outer_gap": float(rng.uniform(0.4, 1.5)), "start": float(rng.uniform(0.0, 0.5)),
              "wet": float(rng.uniform(0.05, 0.5))}
    pitch = "high-pitched" if high else "low-pitched"
    templates = ["an alarm beeping", f"a {pitch} electronic alarm beeping repeatedly",
                 "an alarm going off", f"{pitch} beeps from an alarm"]
    if params["group"] > 1:
        count = {2: "two", 3: "three", 4: "four"}[params["group"]]
        templates.append(f"an alarm beeping in groups of {count}")
    return params, draw_captions(templates, {}, rng)


def _engine(params: dict, rng: np.random.Generator) -> np.ndarray:
    t = _time()
    rpm = params["rpm"] * (1.0 + 0.02 * _slow_curve(rng, 2.0))
    if params["style"] == "revving":
        for centre in params["revs"]:
            rpm += params["rev_rpm"] * np.exp(-0.5 * ((t - centre) / params["rev_width"]) ** 2)
    firing = rpm / 60.0 * params["cylinders"] / 2.0  # a four-stroke cylinder fires every other turn
    phase = 2 * np.pi * np.cumsum(firing) / SAMPLE_RATE
    harmonics = np.arange(1, 60)
    amplitudes = harmonics**-0.8 * rng.uniform(0.5, 1.5, harmonics.shape[0])
    tone = sum(a * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
               for k, a in zip(harmonics, amplitudes) if k * np.max(firing) < 3000.0)
    tone += 0.4 * np.sin(0.5 * phase)  # half-order roughness of uneven cylinders
    pulses = (0.5 + 0.5 * np.cos(phase)) ** 4
    noise = _filter(rng.standard_normal(CLIP_SAMPLES), (100.0, 2000.0)) * pulses
    wave = _filter(tone / np.std(tone) + params["noise"] * noise / np.std(noise), (None, 4000.0))
    return _room(wave, rng, params["wet"], 0.6)


def _describe_engine(rng: np.random.Generator) -> tuple[dict, list[str]]:
    style = pick(rng, ("idle", "revving", "cruising"))
    rpm = float(rng.uniform(650, 1000) if style != "cruising" else rng.uniform(1800, 3000))
    params = {"style": style, "rpm": rpm, "cylinders": int(pick(rng, (4, 6, 8))),
              "revs": sorted(float(x) for x in rng.uniform(1.0, 9.0, int(rng.integers(1, 4)))),
              "rev_rpm": float(rng.uniform(1500, 3500)), "rev_width": float(rng.uniform(0.3, 0.8)),
              "noise": float(rng.uniform(0.2, 0.8)), "wet": float(rng.uniform(0.05, 0.4))}
    templates = {
        "idle": ("an engine idling", "a car engine running at idle", "the low rumble of an idling motor"),
        "revving": ("an engine revving", "a motor revving up several times", "a car engine being revved"),
        "cruising": ("an engine humming steadily", "a vehicle engine running", "the hum of a motor"),
    }[style]
    return params, draw_captions(templates, {}, rng)


def _rain(params: dict, rng: np.random.Generator) -> np.ndarray:
    drops = int(params["rate"] * CLIP_SECONDS)
    positions = rng.integers(0, CLIP_SAMPLES, drops)
    sizes = rng.lognormal(0.0, 0.7, drops)
    kernels = rng.integers(0, 8, drops)
    wave = np.zeros(CLIP_SAMPLES)
    for kernel in range(8):  # eight droplet resonances, each shared by an eighth of the drops
        response = _decaying_partials([(rng.uniform(1200, 6000), 1.0, rng.uniform(0.0015, 0.006))], 0.02)
        impulses = np.zeros(CLIP_SAMPLES)
        np.add.at(impulses, positions[kernels == kernel], sizes[kernels == kernel])
        wave += signal.fftconvolve(impulses, response)[:CLIP_SAMPLES]
    bed = _filter(rng.standard_normal(CLIP_SAMPLES), (400.0, 10000.0)) * (1.0 + 0.2 * _slow_curve(rng, 0.5))
    wave = wave / np.std(wave) + params["bed"] * bed / np.std(bed)
    return _room(wave, rng, params["wet"], 0.8)


def _describe_rain(rng: np.random.Generator) -> tuple[dict, list[str]]:
    intensity = pick(rng, ("light", "steady", "heavy"))
    rate = {"light": (80, 200), "steady": (300, 700), "heavy": (1000, 2500)}[intensity]
    params = {"rate": float(rng.uniform(*rate)), "wet": float(rng.uniform(0.1, 0.6)),
              "bed": {"light": 0.3, "steady": 0.8, "heavy": 1.5}[intensity]}
    templates = ["rain falling", f"{intensity} rain pattering on the ground", "raindrops hitting the ground",
                 {"light": "light rain dripping", "steady": "a steady rainfall",
                  "heavy": "heavy rain pouring down"}[intensity]]
    return params, draw_captions(templates, {}, rng)


def _wind(params: dict, rng: np.random.Generator) -> np.ndarray:
    gust = 1.0 / (1.0 + np.exp(-params["gustiness"] * _slow_curve(rng, params["gust_rate"])))  # 0..1
    centre = np.log(250.0 * (1.0 + 3.0 * gust))
    wave = np.zeros(CLIP_SAMPLES)
    for band_centre in np.geomspace(150.0, 2400.0, 7):  # the noise band follows the gust strength
        weight = np.exp(-0.5 * ((np.log(band_centre) - centre) / 0.45) ** 2)
        band = _filter(rng.standard_normal(CLIP_SAMPLES), (band_centre / 1.4, band_centre * 1.4))
        wave += weight * band / np.std(band)
    rumble = _filter(rng.standard_normal(CLIP_SAMPLES), (None, 150.0))
    wave += 0.5 * rumble / np.std(rumble)
    if params["howl"]:
        pitch = params["howl_pitch"] * (1.0 + 0.5 * gust)
        flutter = 1.0 + 0.3 * _slow_curve(rng, 6.0)
        wave += 1.5 * gust**2 * flutter * _harmonic_tone(pitch, [1.0, 0.1])
    return wave * (0.2 + 0.8 * gust)


def _describe_wind(rng: np.random.Generator) -> tuple[dict, list[str]]:
    style = pick(rng, ("breeze", "gusty", "howling"))
    params = {"gustiness": {"breeze": 0.8, "gusty": 2.5, "howling": 2.0}[style],
              "gust_rate": float(rng.uniform(0.3, 0.8)), "howl": style == "howling",
              "howl_pitch": float(rng.uniform(400, 900))}
    templates = {"breeze": ("a gentle breeze blowing", "soft wind blowing", "wind blowing steadily"),
                 "gusty": ("strong gusts of wind", "wind blowing in gusts", "a gusty wind"),
                 "howling": ("wind howling", "a howling wind whistling", "wind whistling in gusts")}[style]
    return params, draw_captions(templates, {}, rng)


def _telephone(params: dict, rng: np.random.Generator) -> np.ndarray:
    spans, start = [], params["start"]
    while start < CLIP_SECONDS:  # ring cadence: (on, off) seconds, repeated
        for on, off in params["cadence"]:
            spans.append((start, start + on))
            start += on + off
    gate = _gate(spans)
    if params["style"] == "bell":
        # A clapper strikes two small bells 20 times a second while the ringer is on.
        strikes = np.zeros(CLIP_SAMPLES)
        times = np.arange(0.0, CLIP_SECONDS, 1.0 / params["strike_rate"])
        strikes[(times * SAMPLE_RATE).astype(int)] = 1.0
        strikes *= gate
        partials = [(params["bell"] * ratio, amplitude, decay) for ratio, amplitude, decay in
                    ((1.0, 1.0, 0.4), (2.32, 0.5, 0.25), (4.25, 0.3, 0.12), (6.63, 0.15, 0.08))]
        wave = signal.fftconvolve(strikes, _decaying_partials(partials, 1.0))[:CLIP_SAMPLES]
    else:  # an electronic ringer trilling between two tones
        trill = (np.floor(_time() * params["strike_rate"]) % 2) * 0.25 + 1.0
        wave = _harmonic_tone(params["bell"] * trill, [1.0, 0.0, 0.3, 0.0, 0.1]) * gate
    return _room(wave, rng, params["wet"], 0.5)


def _describe_telephone(rng: np.random.Generator) -> tuple[dict, list[str]]:
    style = pick(rng, ("bell", "electronic"))
    # Ring cadences as (on, off) seconds: North American, British double ring, a short one.
    cadence = pick(rng, (((2.0, 4.0),), ((0.4, 0.2), (0.4, 2.0)), ((1.0, 2.0),)))
    params = {"style": style, "cadence": cadence, "start": float(rng.uniform(0.0, 1.0)),
              "strike_rate": float(rng.uniform(18, 22) if style == "bell" else rng.uniform(12, 20)),
              "bell": float(rng.uniform(1300, 2200) if style == "bell" else rng.uniform(900, 1400)),
              "wet": float(rng.uniform(0.1, 0.6))}
    kind = "an old telephone bell ringing" if style == "bell" else "an electronic phone ringtone trilling"
    templates = ["a telephone ringing", "a phone ringing repeatedly", kind, "a telephone rings in a room"]
    return params, draw_captions(templates, {}, rng)


def _clock(params: dict, rng: np.random.Generator) -> np.ndarray:
    wave = np.zeros(CLIP_SAMPLES)
    times = np.arange(params["start"], CLIP_SECONDS, params["interval"])
    for number, time in enumerate(times):
        pitch = params["tick"] * (0.8 if number % 2 else 1.0)  # tick, tock
        partials = [(pitch, 1.0, params["decay"]), (pitch * 2.7, 0.5, params["decay"] / 2)]
        click = _decaying_partials(partials, 0.03)
        at = int((time + rng.normal(0.0, 0.0002)) * SAMPLE_RATE)
        end = min(at + click.shape[0], CLIP_SAMPLES)
        wave[at:end] += click[: end - at] * rng.uniform(0.85, 1.0)
    wave = _room(wave, rng, params["wet"], 0.4)
    return wave + 0.002 * np.max(np.abs(wave)) * rng.standard_normal(CLIP_SAMPLES)  # faint room tone


def _describe_clock(rng: np.random.Generator) -> tuple[dict, list[str]]:
    interval = float(pick(rng, (1.0, 0.5, 0.2)))
    params = {"interval": interval, "start": float(rng.uniform(0.0, interval)),
              "tick": float(rng.uniform(2000, 4500)), "decay": float(rng.uniform(0.002, 0.006)),
              "wet": float(rng.uniform(0.1, 0.5))}
    kind = "a watch ticking quickly" if interval < 0.5 else "a mechanical clock ticking in a quiet room"
    templates = ["a clock ticking", "the steady tick-tock of a clock", kind]
    return params, draw_captions(templates, {}, rng)


SOUNDS: dict[str, tuple[Callable, Callable]] = {  # keyword -> (describe, render)
    "siren": (_describe_siren, _siren),
    "alarm": (_describe_alarm, _alarm),
    "engine": (_describe_engine, _engine),
    "rain": (_describe_rain, _rain),
    "wind": (_describe_wind, _wind),
    "telephone": (_describe_telephone, _telephone),
    "clock": (_describe_clock, _clock),
}


def describe_sound(keyword: str, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """Draw a sound clip's parameters (with the seed its rendering uses) and captions."""
    params, captions = SOUNDS[keyword][0](rng)
    params["render_seed"] = int(rng.integers(2**31))
    return params, captions


def render_sound(keyword: str, params: dict) -> np.ndarray:
    """Synthesise a sound clip; float32 (CLIP_SAMPLES,) at SAMPLE_RATE, not yet normalised."""
    wave = SOUNDS[keyword][1](params, np.random.default_rng(params["render_seed"]))
    return wave.astype(np.float32)

