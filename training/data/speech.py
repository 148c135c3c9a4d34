"""Speech clips: espeak-ng reading sentences in six languages and accents with male or female voices.

A speech clip draws a language, a voice variant, pitch, speed, word gap and five sentences;
espeak-ng speaks them after a short random silence.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data.generation import SAMPLE_RATE, draw_captions, pick, run_renderer, with_article

ESPEAK = "espeak-ng"  # the renderer's command

LANGUAGES = {  # espeak-ng language code -> name in captions
    "en-gb": "English", "en-us": "English", "de": "German", "fr": "French", "es": "Spanish", "it": "Italian",
}
VOICE_VARIANTS = {  # espeak-ng voice variants
    "man": ("m1", "m2", "m3", "m4", "m5", "m6", "m7"),
    "woman": ("f1", "f2", "f3", "f4", "f5"),
}
PITCH_RANGE = {"man": (25, 55), "woman": (45, 80)}  # espeak-ng -p, 0..99
SPEED_RANGE = (125, 185)  # espeak-ng -s, words per minute
SENTENCES_PER_CLIP = 5  # more than 10 s of speech at any speed; the clip is cut at 10 s
_ENGLISH = (
    "The weather was clear this morning, so we walked to the market by the river.",
    "Please remember to close the windows before you leave the house.",
    "My brother found an old map in the attic last winter.",
    "The train to the city leaves at half past eight every day.",
    "She told me the meeting had been moved to Thursday afternoon.",
    "We should plant tomatoes and beans in the garden this spring.",
    "The library on the corner stays open until nine in the evening.",
    "Could you tell me how to get to the nearest bus station?",
    "He fixed the bicycle with a small wrench and a bit of patience.",
    "Our neighbours are painting their kitchen a pale shade of green.",
    "I think the concert starts a little later than we expected.",
    "The children counted the boats sailing past the harbour.",
)
SENTENCES = {
    "en-gb": _ENGLISH,
    "en-us": _ENGLISH,
    "de": (
        "Heute Morgen war das Wetter klar, also sind wir zum Markt gelaufen.",
        "Bitte schließ die Fenster, bevor du das Haus verlässt.",
        "Der Zug in die Stadt fährt jeden Tag um halb neun.",
        "Mein Bruder hat im Winter eine alte Karte auf dem Dachboden gefunden.",
        "Die Bibliothek an der Ecke ist bis neun Uhr abends geöffnet.",
        "Kannst du mir sagen, wo die nächste Bushaltestelle ist?",
        "Im Frühling wollen wir Tomaten und Bohnen im Garten pflanzen.",
        "Die Besprechung wurde auf Donnerstagnachmittag verschoben.",
        "Er hat das Fahrrad mit viel Geduld repariert.",
        "Die Kinder zählen die Boote im Hafen.",
    ),
    "fr": (
        "Ce matin, le temps était clair, alors nous sommes allés au marché.",
        "N'oublie pas de fermer les fenêtres avant de partir.",
        "Le train pour la ville part tous les jours à huit heures et demie.",
        "Mon frère a trouvé une vieille carte dans le grenier.",
        "La bibliothèque du coin reste ouverte jusqu'à neuf heures du soir.",
        "Pouvez-vous me dire où se trouve l'arrêt de bus le plus proche?",
        "Au printemps, nous allons planter des tomates dans le jardin.",
        "La réunion a été déplacée à jeudi après-midi.",
        "Il a réparé le vélo avec beaucoup de patience.",
        "Les enfants comptent les bateaux dans le port.",
    ),
    "es": (
        "Esta mañana el cielo estaba despejado y fuimos caminando al mercado.",
        "Por favor, cierra las ventanas antes de salir de casa.",
        "El tren a la ciudad sale todos los días a las ocho y media.",
        "Mi hermano encontró un mapa antiguo en el desván.",
        "La biblioteca de la esquina abre hasta las nueve de la noche.",
        "¿Puede decirme dónde está la parada de autobús más cercana?",
        "En primavera vamos a plantar tomates y judías en el jardín.",
        "La reunión se ha cambiado al jueves por la tarde.",
        "Arregló la bicicleta con mucha paciencia.",
        "Los niños cuentan los barcos que pasan por el puerto.",
    ),
    "it": (
        "Stamattina il cielo era sereno e siamo andati al mercato a piedi.",
        "Per favore, chiudi le finestre prima di uscire di casa.",
        "Il treno per la città parte ogni giorno alle otto e mezza.",
        "Mio fratello ha trovato una vecchia mappa in soffitta.",
        "La biblioteca all'angolo resta aperta fino alle nove di sera.",
        "Mi sa dire dov'è la fermata dell'autobus più vicina?",
        "In primavera pianteremo pomodori e fagioli nell'orto.",
        "La riunione è stata spostata a giovedì pomeriggio.",
        "Ha riparato la bicicletta con molta pazienza.",
        "I bambini contano le barche nel porto.",
    ),
}
SPEECH_TEMPLATES = (
    "a {person} speaking",
    "a {person} talking in {language}",
    "a {adjective} voice saying a few sentences",
    "a {person} speaks {pace} in {language}",
    "{a_person} reading aloud",
)


def describe_speech(person: str, rng: np.random.Generator) -> tuple[dict, list[str]]:
    """Draw a speech clip of a "man" or "woman" voice."""
    language = pick(rng, tuple(LANGUAGES))
    speed = int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1))
    sentences = SENTENCES[language]
    chosen = rng.permutation(len(sentences))[:SENTENCES_PER_CLIP]
    params = {
        "voice": f"{language}+{pick(rng, VOICE_VARIANTS[person])}",
        "pitch": int(rng.integers(PITCH_RANGE[person][0], PITCH_RANGE[person][1] + 1)),
        "speed": speed,
        "word_gap": int(rng.integers(0, 4)),  # espeak-ng -g, units of 10 ms
        "text": " ".join(sentences[int(index)] for index in chosen),
        "start_seconds": float(rng.uniform(0.0, 0.6)),
    }
    fields = {
        "person": person,
        "a_person": with_article(person),
        "language": LANGUAGES[language],
        "adjective": "male" if person == "man" else "female",
        "pace": "slowly" if speed < 145 else "quickly" if speed > 170 else "calmly",
    }
    return params, draw_captions(SPEECH_TEMPLATES, fields, rng)


def render_speech(params: dict, workdir: Path) -> np.ndarray:
    """Speak the clip's text with espeak-ng; float32 (samples,) at SAMPLE_RATE."""
    wav = workdir / "speech.wav"
    command = [ESPEAK, "-v", params["voice"], "-p", str(params["pitch"]), "-s", str(params["speed"]),
               "-g", str(params["word_gap"]), "-w", str(wav), params["text"]]
    wave = run_renderer(command, wav, " ".join(command[:-1]) + " TEXT")
    return np.concatenate([np.zeros(int(params["start_seconds"] * SAMPLE_RATE), np.float32), wave])

