"""Text the AI responder reads and writes: the language of a question, whether the customer asks
for a person, the handoff sentence, and the formatter every reply goes through."""

from __future__ import annotations

import re
import unicodedata

LANGUAGES = ("en", "es", "pt")

_STOPWORD_TEXT = {
    "en": "the a an is are was what how when where why who can do does my your i you it to of "
    "and in on for with have has please thanks hello hi this that not",
    "es": "el la los las un una es son que como cuando donde por para con mi tu yo usted de del "
    "y en no hola gracias puedo quiero tengo esta esto hay cual",
    "pt": "o a os as um uma e sao que como quando onde por para com meu minha eu voce de do da "
    "em no na nao ola obrigado obrigada posso quero tenho esta isso tem qual",
}
_STOPWORDS = {lang: frozenset(words.split()) for lang, words in _STOPWORD_TEXT.items()}
_HINTS = {"es": "ñ¿¡", "pt": "ãõç"}


def fold(text: str) -> str:
    """Lower case without accents (`Cómo` -> `como`)."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


def detect_language(text: str, default: str = "en") -> str:
    """en, es or pt by the stop words (and letters) a message uses; `default` when unsure."""
    lowered = text.lower()
    words = re.findall(r"\w+", fold(text))
    scores = {lang: sum(1 for w in words if w in stop) for lang, stop in _STOPWORDS.items()}
    for lang, letters in _HINTS.items():
        scores[lang] += 2 * sum(lowered.count(ch) for ch in letters)
    best = max(scores.values())
    if best == 0:
        return default
    leaders = [lang for lang in LANGUAGES if scores[lang] == best]
    return default if default in leaders else leaders[0]


# Asking for a person, per language, matched on folded text at word boundaries. A bare noun
# ("human resources", "the machine's operator", "customer service hours?") is not a request:
# each pattern needs a verb of talking with its person, or a phrase that only names one.
_PEOPLE = {
    "en": r"(?:a |an |the |some |your |one of your )?(?:real |live |human )?"
    r"(?:human(?: being)?|person|people|agent|representative|rep|operator|someone|somebody"
    r"|staff|member of (?:your |the )?(?:staff|team))",
    "es": r"(?:un |una |el |la |alguno de sus |algun )?"
    r"(?:humano|persona|agente|asesor|asesora|operador|operadora|representante|alguien"
    r"|ejecutivo|ejecutiva)(?: real| humano| humana)?",
    "pt": r"(?:um |uma |o |a |algum )?"
    r"(?:humano|pessoa|atendente|agente|operador|operadora|representante|alguem)"
    r"(?: real| humano| humana)?",
}
HANDOFF_PATTERNS = {
    "en": [
        r"(?:talk|speak|chat)(?:ing)? (?:to|with) " + _PEOPLE["en"],
        r"(?:connect|transfer|put) me (?:to|with|through to) " + _PEOPLE["en"],
        r"(?:want|need|get) (?:a |an )?(?:real person|human|live agent|human agent)",
        r"real person",
        r"live agent",
        r"human agent",
        r"(?:a|an) human(?! resources| rights)(?: please)?",
    ],
    "es": [
        r"(?:hablar|comunicarme|conversar|chatear|contactar) con " + _PEOPLE["es"],
        r"(?:pasame|paseme|pasarme|comunicame|comuniqueme) con " + _PEOPLE["es"],
        r"persona real",
        r"agente humano",
        r"atencion humana",
        r"(?:quiero|necesito) (?:un humano|una persona|un agente|un asesor|una asesora)",
    ],
    "pt": [
        r"(?:falar|conversar|papear) com " + _PEOPLE["pt"],
        r"(?:me passa|me transfere|transferir) (?:para|pra) " + _PEOPLE["pt"],
        r"pessoa real",
        r"atendente humano",
        r"atendimento humano",
        r"(?:quero|preciso de) (?:um humano|uma pessoa|um atendente|uma atendente|um agente)",
    ],
}
_HANDOFF = {
    lang: re.compile(r"\b(" + "|".join(patterns) + r")\b")
    for lang, patterns in HANDOFF_PATTERNS.items()
}


def asks_for_person(text: str) -> str | None:
    """The words with which the customer asks for a person (any of the languages), or None."""
    folded = re.sub(r"\s+", " ", re.sub(r"[^\w\s]", " ", fold(text)))
    for pattern in _HANDOFF.values():
        found = pattern.search(folded)
        if found:
            return found.group(1)
    return None


HANDOFF_MESSAGES = {
    "en": "I'm passing you to a member of our team; they will reply here shortly.",
    "es": "Te paso con una persona de nuestro equipo; te responderá aquí en breve.",
    "pt": "Vou passar você para uma pessoa da nossa equipe; ela responderá aqui em breve.",
}


def handoff_message(language: str, custom: str | None) -> str:
    return custom or HANDOFF_MESSAGES.get(language, HANDOFF_MESSAGES["en"])


# -- the formatter --------------------------------------------------------------------------------

_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")
_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", re.M)
_BULLET = re.compile(r"^\s*[-+]\s+", re.M)
_LINK = re.compile(r"\[([^\]\n]+)\]\((https?://[^)\s]+)\)")
_STRIKE = re.compile(r"~~(.+?)~~")
_BLANKS = re.compile(r"\n{3,}")
_SPACES = re.compile(r"[ \t]+\n")
_SENTENCE_END = re.compile(r"[.!?…](?=\s|$)")


def to_whatsapp(text: str) -> str:
    """Markdown a model likes to write -> WhatsApp's markup (*bold*, _italic_, ~strike~).

    A single-star span is left alone: it is already WhatsApp's bold, which the prompt asks the
    model for and knowledge-base articles are written in (Markdown's `_italic_` is WhatsApp's
    italic as it stands)."""
    text = _LINK.sub(r"\1 (\2)", text)
    text = _HEADING.sub(lambda m: "\x00" + m.group(1) + "\x00", text)
    text = _BOLD.sub(lambda m: "\x00" + (m.group(1) or m.group(2)) + "\x00", text)
    text = _STRIKE.sub(r"~\1~", text)
    text = _BULLET.sub("• ", text)
    return text.replace("\x00", "*")


def cap(text: str, limit: int) -> str:
    """At most `limit` characters, cut after the last whole sentence (or word) that fits."""
    if len(text) <= limit:
        return text
    head = text[: limit - 1]
    ends = [m.end() for m in _SENTENCE_END.finditer(head)]
    if ends and ends[-1] > limit // 2:
        return head[: ends[-1]].rstrip()
    cut = head.rsplit(None, 1)[0] if " " in head else head
    return cut.rstrip(" ,;:") + "…"


def split(text: str, size: int) -> list[str]:
    """Pieces of at most `size` characters, cut between paragraphs, sentences or words."""
    parts: list[str] = []
    rest = text
    while len(rest) > size:
        window = rest[: size + 1]
        at = window.rfind("\n\n")
        if at < size // 3:
            at = window.rfind("\n")
        if at < size // 3:
            ends = [m.end() for m in _SENTENCE_END.finditer(window)]
            at = ends[-1] if ends and ends[-1] > size // 3 else -1
        if at < size // 3:
            at = window.rfind(" ")
        if at <= 0:
            at = size
        parts.append(rest[:at].strip())
        rest = rest[at:].strip()
    if rest:
        parts.append(rest)
    return [p for p in parts if p]


def format_reply(text: str, *, max_chars: int, split_chars: int) -> list[str]:
    """Trim, collapse blank lines, WhatsApp markup, length cap, then split: the messages to
    send (none when nothing is left)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = to_whatsapp(text.strip())
    text = _SPACES.sub("\n", text)
    text = _BLANKS.sub("\n\n", text).strip()
    if not text:
        return []
    return split(cap(text, max_chars), split_chars)
