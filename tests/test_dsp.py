"""Numerical checks of the DSP blocks against references: torch.stft/istft, kaldi-native-fbank, soxr."""

from __future__ import annotations

import kaldi_native_fbank as knf
import numpy as np
import pytest
import soxr
import torch

from training.models.fbank import LOG_FLOOR, LOW_FREQ_HZ, MEL_BREAK_HZ, MEL_SCALE, KaldiFbank, mel_scale
from training.models.pqmf import (
    PQMF,
    cosine_modulated_filters,
    prototype_lowpass,
    white_noise_reconstruction_error,
)
from training.models.resample import Resample
from training.models.stft import STFT

FULL_BAND_RATE = 44100
BEATS_RATE = 16000
C_MAJOR_HZ = (261.63, 329.63, 392.00)  # C4, E4, G4


def snr_db(estimate: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor) -> float:
    estimate, reference = np.asarray(estimate, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    return float(10 * np.log10(np.sum(reference**2) / np.sum((estimate - reference) ** 2)))


def piano_chord(seconds: float, rate: int = FULL_BAND_RATE) -> np.ndarray:
    """C-E-G with 8 decaying harmonics each and a struck-string envelope, peak about 1."""
    t = np.arange(int(seconds * rate)) / rate
    tones = sum(
        0.5**h * np.sin(2 * np.pi * f0 * (h + 1) * t + h) for f0 in C_MAJOR_HZ for h in range(8)
    )
    return (tones * np.exp(-1.5 * t) / 3).astype(np.float32)


def speechlike(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """A gliding voiced tone, a whistle and bursts of noise: enough to fill every mel band."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    voiced = sum(0.3 / (h + 1) * np.sin(2 * np.pi * 180 * (h + 1) * t * (1 + 0.05 * t)) for h in range(10))
    whistle = 0.1 * np.sin(2 * np.pi * 1760 * t) * (t % 1.0 > 0.5)
    noise = 0.05 * rng.standard_normal(t.size) * np.exp(-3 * (t % 0.5))
    return (voiced + whistle + noise).astype(np.float32)


# --------------------------------------------------------------------------- PQMF


@pytest.fixture(scope="module")
def pqmf() -> PQMF:
    return PQMF()


def test_pqmf_filters_are_buffers_and_shapes(pqmf: PQMF):
    assert list(pqmf.parameters()) == []
    assert {"analysis_filters", "synthesis_filters"} <= {name for name, _ in pqmf.named_buffers()}
    x = torch.randn(3, 1, 4 * 1000)
    subbands = pqmf.analysis(x)
    assert subbands.shape == (3, 4, 1000)
    assert pqmf.synthesis(subbands).shape == x.shape


def test_pqmf_rejects_length_not_multiple_of_subbands(pqmf: PQMF):
    with pytest.raises(ValueError, match="multiple of 4"):
        pqmf.analysis(torch.randn(1, 1, 4001))


@pytest.mark.parametrize(
    "name, signal",
    [
        ("white noise", np.random.default_rng(1).standard_normal(FULL_BAND_RATE).astype(np.float32)),
        ("piano chord", piano_chord(1.0)),
    ],
)
def test_pqmf_reconstruction(pqmf: PQMF, name: str, signal: np.ndarray):
    x = torch.from_numpy(signal)[None, None]
    y = pqmf.synthesis(pqmf.analysis(x))
    assert snr_db(y[0, 0], x[0, 0]) >= 40.0, name  # nothing ignored, zero padding at both edges included
    interior = slice(pqmf.taps, -pqmf.taps)
    assert snr_db(y[0, 0, interior], x[0, 0, interior]) >= 60.0, name


def test_pqmf_other_band_counts_reconstruct():
    for subbands, taps in [(2, 62), (8, 126)]:
        bank = PQMF(subbands, taps)
        x = torch.randn(1, 1, subbands * 2000)
        y = bank.synthesis(bank.analysis(x))
        assert snr_db(y[0, 0, taps:-taps], x[0, 0, taps:-taps]) >= 60.0, subbands


def test_pqmf_cutoff_is_a_local_optimum(pqmf: PQMF):
    def error(cutoff: float) -> float:
        return white_noise_reconstruction_error(*cosine_modulated_filters(4, prototype_lowpass(62, cutoff, 9.0)))

    best = error(pqmf.cutoff)
    assert best < error(pqmf.cutoff - 1e-3) and best < error(pqmf.cutoff + 1e-3)
    assert error(1 / 8) > 100 * best  # the nominal band edge is far worse than the optimised cutoff


def test_pqmf_puts_a_tone_in_its_band(pqmf: PQMF):
    t = np.arange(FULL_BAND_RATE) / FULL_BAND_RATE
    band_width = FULL_BAND_RATE / 2 / 4
    for band in range(4):
        tone = np.sin(2 * np.pi * (band + 0.5) * band_width * t).astype(np.float32)
        energies = pqmf.analysis(torch.from_numpy(tone)[None, None]).pow(2).sum(-1)[0]
        assert energies.argmax().item() == band
        assert energies[band] / energies.sum() > 0.999


# --------------------------------------------------------------------------- STFT

STFT_CONFIGS = [(1024, 256), (512, 128), (400, 160)]


def torch_stft_channels(x: torch.Tensor, n_fft: int, hop: int) -> tuple[torch.Tensor, torch.Tensor]:
    spec = torch.stft(
        x, n_fft, hop, window=torch.hann_window(n_fft), center=True, pad_mode="reflect", return_complex=True
    )
    return spec, torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)


def test_stft_filters_are_buffers_and_shape():
    stft = STFT(1024, 256)
    assert list(stft.parameters()) == []
    spec = stft(torch.randn(2, 10_000))
    assert spec.shape == (2, 2, 10_000 // 256 + 1, 513)


@pytest.mark.parametrize("n_fft, hop", STFT_CONFIGS)
def test_stft_matches_torch_stft(n_fft: int, hop: int):
    torch.manual_seed(0)
    x = torch.stack([torch.from_numpy(piano_chord(0.5)), torch.rand(22050) * 2 - 1])
    spec = STFT(n_fft, hop)(x)
    _, reference = torch_stft_channels(x, n_fft, hop)
    assert spec.shape == reference.shape
    assert (spec - reference).abs().max().item() <= 1e-4


@pytest.mark.parametrize("n_fft, hop", STFT_CONFIGS)
def test_stft_round_trip(n_fft: int, hop: int):
    stft = STFT(n_fft, hop)
    x = torch.from_numpy(speechlike(1.0, FULL_BAND_RATE))[None]
    y = stft.inverse(stft(x), x.shape[-1])
    assert y.shape == x.shape
    assert snr_db(y, x) >= 60.0


@pytest.mark.parametrize("n_fft, hop", STFT_CONFIGS)
def test_stft_inverse_matches_torch_istft(n_fft: int, hop: int):
    stft = STFT(n_fft, hop)
    torch.manual_seed(0)
    x = torch.randn(2, 9000)
    spectrum, channels = torch_stft_channels(x, n_fft, hop)
    # Also a spectrum no signal has (imaginary DC and Nyquist included, which the inverse ignores).
    random_channels = torch.randn_like(channels)
    random_spectrum = torch.complex(random_channels[:, 0], random_channels[:, 1]).transpose(1, 2)
    for complex_spec, spec in [(spectrum, channels), (random_spectrum, random_channels)]:
        for length in [None, 9000, 5000]:
            expected = torch.istft(
                complex_spec, n_fft, hop, window=torch.hann_window(n_fft), center=True, length=length
            )
            assert (stft.inverse(spec, length) - expected).abs().max().item() <= 1e-5


def test_stft_inverse_pads_past_the_last_frame_with_zeros():
    stft = STFT(512, 128)
    spec = stft(torch.randn(1, 4096))
    available = (spec.shape[2] - 1) * 128 + 512 // 2
    y = stft.inverse(spec, available + 100)
    assert y.shape == (1, available + 100)
    assert torch.all(y[:, available:] == 0)


# --------------------------------------------------------------------------- Kaldi fbank

KALDI_TOLERANCE = 1e-3  # natural-log units: a relative error of 0.1 % in a mel energy


def kaldi_native_fbank(wave: np.ndarray, num_bins: int, low_freq: float = LOW_FREQ_HZ, high_freq: float = 0.0):
    """Reference features from kaldi-native-fbank with the BEATs / torchaudio options."""
    options = knf.FbankOptions()
    options.frame_opts.samp_freq = BEATS_RATE
    options.frame_opts.frame_length_ms = 25.0
    options.frame_opts.frame_shift_ms = 10.0
    options.frame_opts.dither = 0.0
    options.frame_opts.snip_edges = True
    options.frame_opts.window_type = "povey"
    options.frame_opts.preemph_coeff = 0.97
    options.frame_opts.remove_dc_offset = True
    options.frame_opts.round_to_power_of_two = True
    options.mel_opts.num_bins = num_bins
    options.mel_opts.low_freq = low_freq
    options.mel_opts.high_freq = high_freq
    options.use_energy = False
    options.use_log_fbank = True
    options.use_power = True
    extractor = knf.OnlineFbank(options)
    extractor.accept_waveform(BEATS_RATE, wave.tolist())
    extractor.input_finished()
    return np.stack([extractor.get_frame(i) for i in range(extractor.num_frames_ready)])


@pytest.fixture(scope="module")
def scaled_wave() -> np.ndarray:
    """1.5 s of speech-like audio at 16 kHz, scaled by 2**15 as BEATs does."""
    return speechlike(1.5, BEATS_RATE, seed=3)[:-77] * 2**15


def test_fbank_matches_kaldi_with_80_bins(scaled_wave: np.ndarray):
    features = KaldiFbank(num_mel_bins=80)(torch.from_numpy(scaled_wave)[None])[0].numpy()
    reference = kaldi_native_fbank(scaled_wave, 80)
    assert features.shape == reference.shape
    assert np.abs(features - reference).max() <= KALDI_TOLERANCE


def test_fbank_matches_kaldi_with_beats_128_bins(scaled_wave: np.ndarray):
    """Kaldi refuses 128 bins at 16 kHz (the 4th filter holds no FFT bin); torchaudio, which BEATs uses,
    gives that filter zero weight and so log(FLT_EPSILON). Every other filter is checked against Kaldi by
    asking it for 3 neighbouring filters whose band edges are those of the 128-bin bank."""
    features = KaldiFbank()(torch.from_numpy(scaled_wave)[None])[0].numpy()
    assert features.shape == (1 + (len(scaled_wave) - 400) // 160, 128)
    with pytest.raises(ValueError):
        kaldi_native_fbank(scaled_wave, 128)
    mel_low = mel_scale(LOW_FREQ_HZ)
    mel_step = (mel_scale(BEATS_RATE / 2) - mel_low) / (128 + 1)

    def hz(mel: float) -> float:
        return float(MEL_BREAK_HZ * np.expm1(mel / MEL_SCALE))

    empty = []
    for band in range(128):
        reference = None
        for first in sorted({min(max(band - k, 0), 128 - 3) for k in (1, 0, 2)}):
            try:
                reference = kaldi_native_fbank(
                    scaled_wave,
                    3,
                    low_freq=hz(mel_low + first * mel_step),
                    high_freq=min(hz(mel_low + (first + 4) * mel_step), BEATS_RATE / 2),
                )[:, band - first]
                break
            except ValueError:  # one of the three filters is empty
                continue
        if reference is None:
            empty.append(band)
            continue
        assert np.abs(features[:, band] - reference).max() <= KALDI_TOLERANCE, band
    assert empty == [3]
    assert np.all(features[:, empty] == np.float32(np.log(np.float32(LOG_FLOOR))))


def test_fbank_frames_follow_snip_edges_and_short_input_is_rejected():
    fbank = KaldiFbank()
    for length, frames in [(400, 1), (559, 1), (560, 2), (16000, 98)]:
        assert fbank(torch.randn(2, length)).shape == (2, frames, 128)
    with pytest.raises(ValueError, match="at least 400"):
        fbank(torch.randn(1, 399))


def test_fbank_of_silence_is_the_log_floor():
    features = KaldiFbank()(torch.zeros(1, 1600))
    assert torch.allclose(features, torch.full_like(features, float(np.log(np.float32(LOG_FLOOR)))))


# --------------------------------------------------------------------------- Resample


@pytest.mark.parametrize("new_rate, reduced", [(16000, (441, 160)), (48000, (147, 160))])
def test_resample_sine_matches_analytic_and_soxr(new_rate: int, reduced: tuple[int, int]):
    resample = Resample(FULL_BAND_RATE, new_rate)
    assert (resample.orig, resample.new) == reduced
    assert list(resample.parameters()) == []
    length = 2 * FULL_BAND_RATE + 37
    t = np.arange(length) / FULL_BAND_RATE
    sine = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    out = resample(torch.from_numpy(sine)[None])[0].numpy()
    assert len(out) == -(-length * new_rate // FULL_BAND_RATE)
    middle = slice(new_rate // 10, len(out) - new_rate // 10)
    analytic = np.sin(2 * np.pi * 1000 * np.arange(len(out)) / new_rate)
    assert snr_db(out[middle], analytic[middle]) >= 40.0
    reference = soxr.resample(sine, FULL_BAND_RATE, new_rate)
    assert snr_db(out[middle], reference[middle]) >= 30.0


@pytest.mark.parametrize("new_rate", [16000, 48000])
def test_resample_music_agrees_with_soxr(new_rate: int):
    chord = piano_chord(1.0)  # harmonics up to 3.1 kHz, below both passbands
    out = Resample(FULL_BAND_RATE, new_rate)(torch.from_numpy(chord)[None])[0].numpy()
    reference = soxr.resample(chord, FULL_BAND_RATE, new_rate)
    middle = slice(new_rate // 10, min(len(out), len(reference)) - new_rate // 10)
    assert snr_db(out[middle], reference[middle]) >= 30.0


def test_resample_removes_what_the_new_rate_cannot_hold():
    length = FULL_BAND_RATE
    tone = np.sin(2 * np.pi * 10_000 * np.arange(length) / FULL_BAND_RATE).astype(np.float32)
    out = Resample(FULL_BAND_RATE, 16000)(torch.from_numpy(tone)[None])[0].numpy()
    middle = out[1600:-1600]
    assert 20 * np.log10(np.sqrt(np.mean(middle**2)) / np.sqrt(0.5)) <= -60.0


def test_resample_identity_and_batch():
    x = torch.randn(3, 1000)
    assert torch.equal(Resample(44100, 44100)(x), x)
    resample = Resample(44100, 16000)
    batched = resample(x)
    assert batched.shape == (3, -(-1000 * 160 // 441))
    assert torch.allclose(batched[1], resample(x[1:2])[0], atol=1e-6)
