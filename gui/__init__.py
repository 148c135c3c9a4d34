"""The PyQt6 desktop app for live separation (`hybridsep gui`); it drives ``hybridsep_rt`` and holds no DSP
or model code."""
