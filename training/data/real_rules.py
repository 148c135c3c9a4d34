"""The labelling rules of the real-recording corpus (`real_rules.toml`) and the packages it refuses to read.

`Rules.label(package, path)` gives the class, family, split and speech metadata of one file of a Debian package,
or None when no rule labels it. Paths are the file's path as dpkg lists it; a member of a zip archive (a Quake
`.pk3`, a GrandOrgue `.orgue`) is written ARCHIVE!MEMBER.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

RULES_PATH = Path(__file__).with_name("real_rules.toml")
SPLIT_NAMES = ("train", "valid", "test")
SEXES = ("female", "male")
# Packages reserved for evaluation outside the project: never read, whatever rules or paths the builder is given.
RESERVED_PACKAGES = (
    "sonic-pi-samples", "asterisk-core-sounds-en-wav", "asterisk-core-sounds-en-gsm", "asterisk-core-sounds-en-g722",
    "alsa-utils", "sound-theme-freedesktop", "openclonk-data", "openttd-opensfx", "lugaru-data",
)
# Where those packages put their audio (symbolic links are resolved before the check).
RESERVED_PATHS = (
    "/usr/share/sonic-pi", "/usr/share/asterisk/sounds/en_US_f_Allison", "/usr/share/asterisk/sounds/en/",
    "/usr/share/sounds/alsa", "/usr/share/sounds/freedesktop", "/usr/share/games/openclonk", "/usr/share/openclonk",
    "/usr/share/games/openttd/baseset", "/usr/share/games/openttd/data/opensfx", "/usr/share/games/lugaru",
)
ARCHIVE_SEPARATOR = "!"
_SEPARATORS = re.compile(r"[_\-.+/]+")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=[0-9])|(?<=[0-9])(?=[A-Za-z])")


class RulesError(ValueError):
    """A rules file that cannot be used, or a request for a reserved package or path."""


def reserved_reason(package: str | None = None, path: str | None = None) -> str | None:
    """Why a package or a path may not be read, or None when it may."""
    if package is not None and package in RESERVED_PACKAGES:
        return f"package {package} is reserved for evaluation outside the project and is never read"
    if path is not None:
        real = str(Path(path.split(ARCHIVE_SEPARATOR)[0]).resolve())
        for prefix in RESERVED_PATHS:
            if real.startswith(prefix.rstrip("/") + "/") or real == prefix.rstrip("/") or path.startswith(prefix):
                return f"{path} lies in {prefix}, reserved for evaluation outside the project, and is never read"
    return None


def name_text(text: str) -> str:
    """A file or instrument name as the keyword table reads it: lower case, words (camel case, letters and digits)
    apart, separators as spaces."""
    return _SEPARATORS.sub(" ", _CAMEL.sub(" ", text)).lower().strip()


@dataclass(frozen=True)
class Label:
    """What the rules say about one file."""

    cls: str
    family: str
    split: str
    language: str | None = None
    sex: str | None = None
    speaker: str | None = None


@dataclass(frozen=True)
class _Override:
    pattern: re.Pattern
    values: dict


@dataclass(frozen=True)
class PackageRules:
    name: str
    licence: str
    files: re.Pattern
    exclude: re.Pattern | None
    family: str
    cls: str | None
    text: str  # "name" or "drumkit"
    captions: str | None
    defaults: dict
    overrides: tuple[_Override, ...]

    def wants(self, path: str) -> bool:
        """Whether the rules read this file of the package."""
        return bool(self.files.search(path)) and not (self.exclude and self.exclude.search(path))


def _compile(pattern: str, where: str) -> re.Pattern:
    try:
        return re.compile(pattern)
    except re.error as error:
        raise RulesError(f"{where}: bad regular expression {pattern!r}: {error}") from None


class Rules:
    """The parsed rules file. `classes` maps each class to its YAMNet tags and caption phrase."""

    def __init__(self, path: str | Path = RULES_PATH):
        self.path = Path(path)
        try:
            data = tomllib.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as error:
            raise RulesError(f"cannot read the rules file {self.path}: {error}") from None
        self.classes: dict[str, dict] = data.get("classes", {})
        self.languages: dict[str, str] = data.get("languages", {})
        self.family_splits: dict[str, str] = data.get("families", {})
        for family, split in self.family_splits.items():
            if split not in SPLIT_NAMES:
                raise RulesError(f"{self.path}: family {family!r} has split {split!r}, not one of {SPLIT_NAMES}")
        self.keywords = [(_compile(entry["pattern"], f"{self.path} keywords"), self._known(entry["class"]))
                         for entry in data.get("keywords", [])]
        self.packages: dict[str, PackageRules] = {}
        for name, entry in data.get("packages", {}).items():
            reason = reserved_reason(package=name)
            if reason:
                raise RulesError(f"{self.path}: {reason}")
            where = f"{self.path} [packages.{name}]"
            overrides = []
            for item in entry.get("overrides", []):
                values = {key: value for key, value in item.items() if key != "pattern"}
                if "class" in values:
                    self._known(values["class"])
                overrides.append(_Override(_compile(item["pattern"], where), values))
            self.packages[name] = PackageRules(
                name=name, licence=entry["licence"], files=_compile(entry["files"], where),
                exclude=_compile(entry["exclude"], where) if "exclude" in entry else None,
                family=entry.get("family", name), cls=self._known(entry["class"]) if "class" in entry else None,
                text=entry.get("text", "name"), captions=entry.get("captions"),
                defaults={key: entry[key] for key in ("language", "sex", "speaker") if key in entry},
                overrides=tuple(overrides),
            )

    def _known(self, cls: str) -> str:
        if cls not in self.classes:
            raise RulesError(f"{self.path}: class {cls!r} is used but not listed in [classes]")
        return cls

    def package(self, name: str) -> PackageRules:
        reason = reserved_reason(package=name)
        if reason:
            raise RulesError(reason)
        if name not in self.packages:
            raise RulesError(f"no labelling rules for package {name!r} in {self.path}")
        return self.packages[name]

    def keyword_class(self, text: str) -> str | None:
        """The class of the first keyword pattern found in `text` (after `name_text`), or None."""
        text = name_text(text)
        for pattern, cls in self.keywords:
            if pattern.search(text):
                return cls
        return None

    def language_name(self, code: str | None) -> str | None:
        return None if not code else self.languages.get(code, code)

    def label(self, package: str, path: str, instrument: str | None = None) -> Label | None:
        """The label of a file of `package`, or None when the package's rules do not read it or cannot label it.
        `instrument`: the file's instrument name (Hydrogen's drumkit.xml), searched before the file name."""
        rules = self.package(package)
        reason = reserved_reason(path=path)
        if reason:
            raise RulesError(reason)
        if not rules.wants(path):
            return None
        values = {"family": rules.family, "class": rules.cls, **rules.defaults}
        for override in rules.overrides:
            match = override.pattern.search(path)
            if not match:
                continue
            for key, value in override.values.items():
                if key == "default_language":
                    continue
                expanded = match.expand(value) if isinstance(value, str) and "\\" in value else value
                if key == "language" and not expanded:
                    expanded = override.values.get("default_language")
                values[key] = expanded
        cls = values.get("class")
        if cls is None:
            cls = self._class_from_names(path, instrument if rules.text == "drumkit" else None)
        if cls is None:
            return None
        family = values["family"]
        sex = values.get("sex")
        if sex is not None and sex not in SEXES:
            raise RulesError(f"{self.path} [packages.{package}]: sex {sex!r} is not one of {SEXES}")
        return Label(cls=cls, family=family, split=self.family_splits.get(family, "train"),
                     language=self.language_name(values.get("language")), sex=sex, speaker=values.get("speaker"))

    def _class_from_names(self, path: str, instrument: str | None) -> str | None:
        pure = PurePosixPath(path.replace(ARCHIVE_SEPARATOR, "/"))
        texts = ([instrument] if instrument else []) + [pure.stem]
        folders = [part for part in pure.parent.parts if part not in ("/", "usr", "share", "games")]
        texts += list(reversed(folders))
        for text in texts:
            cls = self.keyword_class(text)
            if cls is not None:
                return cls
        return None
