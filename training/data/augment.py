"""Augmentation of mixture sources with pedalboard (Spotify's audio effects library), so that a few real voices,
kits and rooms stand for many.

Each source of a training mixture (the target and every interferer) gets its own draw of

- gain (a level change before the mixer sets the energy ratio: it only matters with EQ and reverb),
- EQ: one peaking band,
- room reverb (pedalboard's Freeverb),
- mild pitch and tempo changes (Rubber Band, through `pedalboard.time_stretch`), the length kept;

and the whole example gets one draw of band-limiting (telephone 300-3400 Hz, or the bands of 11.025 / 22.05 kHz
sources; a scipy Butterworth filter), applied alike to every source: the target reference loses the same bands as the target in the mixture,
so the model is never asked to invent missing bands. The mixer sums the transformed sources, so the reference is
exactly the target as it sounds in the mixture. Every parameter is drawn from the example's generator: the same
seed gives the same audio. Augmentation is off unless a MixerConfig asks for it (evaluation presets never do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.audio import fit_length

# Cut-offs of the band-limits sources in the real corpus have: telephone speech (asterisk prompts, 8 kHz: the
# ITU-T G.712 voice band, 300-3400 Hz) and games' 11.025 / 22.05 kHz files (Nyquist 5.5 / 11 kHz).
TELEPHONE_BAND_HZ = (300.0, 3400.0)
LOWPASS_HZ = (5500.0, 11000.0)
BAND_LIMIT_ORDER = 8  # Butterworth order of the band-limit: 48 dB per octave, close to a resampler's cut


@dataclass
class AugmentConfig:
    """How often each transform is applied and how strongly (ranges are drawn uniformly). Not from the paper."""

    gain_db: tuple[float, float] = (-6.0, 6.0)
    eq_probability: float = 0.5
    eq_frequency_hz: tuple[float, float] = (150.0, 8000.0)
    eq_gain_db: tuple[float, float] = (-9.0, 9.0)
    reverb_probability: float = 0.3
    reverb_room_size: tuple[float, float] = (0.1, 0.8)
    reverb_wet: tuple[float, float] = (0.05, 0.35)
    pitch_probability: float = 0.2
    pitch_semitones: tuple[float, float] = (-1.0, 1.0)
    tempo_probability: float = 0.2
    tempo_factor: tuple[float, float] = (0.92, 1.08)
    band_limit_probability: float = 0.15  # per example, applied to every source alike

    def __post_init__(self) -> None:
        for name in ("eq_probability", "reverb_probability", "pitch_probability", "tempo_probability",
                     "band_limit_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("gain_db", "eq_frequency_hz", "eq_gain_db", "reverb_room_size", "reverb_wet",
                     "pitch_semitones", "tempo_factor"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"{name} must be (low, high), got {(low, high)}")
        if self.tempo_factor[0] <= 0:
            raise ValueError("tempo_factor must be positive")


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(*bounds))


def draw_source_effects(cfg: AugmentConfig, rng: np.random.Generator) -> dict:
    """The transforms of one source: a dict of parameters (keys present only for the transforms drawn)."""
    effects = {"gain_db": _uniform(rng, cfg.gain_db)}
    if rng.random() < cfg.eq_probability:
        effects["eq"] = (_uniform(rng, cfg.eq_frequency_hz), _uniform(rng, cfg.eq_gain_db))
    if rng.random() < cfg.reverb_probability:
        effects["reverb"] = (_uniform(rng, cfg.reverb_room_size), _uniform(rng, cfg.reverb_wet))
    if rng.random() < cfg.pitch_probability:
        effects["pitch_semitones"] = _uniform(rng, cfg.pitch_semitones)
    if rng.random() < cfg.tempo_probability:
        effects["tempo"] = _uniform(rng, cfg.tempo_factor)
    return effects


def draw_band_limit(cfg: AugmentConfig, rng: np.random.Generator) -> tuple[float | None, float] | None:
    """The band-limit of one example: (highpass Hz or None, lowpass Hz), or None for full band."""
    if rng.random() >= cfg.band_limit_probability:
        return None
    choice = int(rng.integers(1 + len(LOWPASS_HZ)))
    return TELEPHONE_BAND_HZ if choice == 0 else (None, LOWPASS_HZ[choice - 1])


def apply_source_effects(wave: np.ndarray, sample_rate: int, effects: dict) -> np.ndarray:
    """Apply `draw_source_effects`'s transforms to a float (samples,) wave; returns float64 of the same length."""
    import pedalboard

    audio = np.asarray(wave, dtype=np.float32)[None]
    if "pitch_semitones" in effects or "tempo" in effects:
        audio = pedalboard.time_stretch(audio, sample_rate, stretch_factor=effects.get("tempo", 1.0),
                                        pitch_shift_in_semitones=effects.get("pitch_semitones", 0.0))
    plugins = [pedalboard.Gain(gain_db=effects["gain_db"])]
    if "eq" in effects:
        frequency, gain_db = effects["eq"]
        plugins.append(pedalboard.PeakFilter(cutoff_frequency_hz=min(frequency, 0.45 * sample_rate),
                                             gain_db=gain_db, q=1.0))
    if "reverb" in effects:
        room_size, wet = effects["reverb"]
        plugins.append(pedalboard.Reverb(room_size=room_size, wet_level=wet, dry_level=1.0 - wet))
    out = pedalboard.Pedalboard(plugins)(audio, sample_rate)[0]
    return fit_length(out.astype(np.float64), wave.shape[-1])


def apply_band_limit(wave: np.ndarray, sample_rate: int, band: tuple[float | None, float] | None) -> np.ndarray:
    """Band-limit a float (samples,) wave (`draw_band_limit`) with an order-BAND_LIMIT_ORDER Butterworth filter
    (scipy; pedalboard's filters are first-order). Linear, so the band-limited sources sum to the band-limited
    mixture."""
    if band is None:
        return np.asarray(wave, dtype=np.float64)
    from scipy.signal import butter, sosfilt

    highpass, lowpass = band
    lowpass = min(lowpass, 0.45 * sample_rate)
    if highpass is None:
        sos = butter(BAND_LIMIT_ORDER, lowpass, btype="lowpass", fs=sample_rate, output="sos")
    else:
        sos = butter(BAND_LIMIT_ORDER, (highpass, lowpass), btype="bandpass", fs=sample_rate, output="sos")
    return sosfilt(sos, np.asarray(wave, dtype=np.float64))


def augment_sources(segments: list[np.ndarray], sample_rate: int, cfg: AugmentConfig,
                    rng: np.random.Generator) -> list[np.ndarray]:
    """Transform the segments of one example (target first): each its own effects, all one band-limit."""
    effects = [draw_source_effects(cfg, rng) for _ in segments]
    band = draw_band_limit(cfg, rng)
    return [apply_band_limit(apply_source_effects(segment, sample_rate, drawn), sample_rate, band)
            for segment, drawn in zip(segments, effects)]
