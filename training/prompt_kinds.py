"""Prompts of every kind a Spec-Bench-style benchmark covers, written from the project's own templates.

Round 1 needs nothing but these lists: writing, roleplay, reasoning, math, coding, STEM, humanities, QA, math word
problems and translation (foreign sentences composed from clause lists, both directions).  Round 2 is built over
the target's own round-1 answers: summaries of them, answers over them as passages (RAG), extraction from them, and
second turns of the conversation (the answer stays in the chat history).  No benchmark question is copied: the
templates are generic, and `training.selfdistill` drops any prompt equal to a bundled evaluation prompt.
Each prompt's `source` is its kind, so held-out agreement can be read by kind (`python -m eval.agreement`).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

TOPICS = (
    "volcanoes", "the water cycle", "photosynthesis", "black holes", "the Roman Empire", "machine learning",
    "climate change", "honey bees", "the stock market", "jazz music", "the human heart", "electric cars",
    "coral reefs", "the printing press", "vaccines", "the moon landing", "renewable energy", "chess",
    "the French Revolution", "recycling", "sleep", "coffee", "the internet", "earthquakes", "dinosaurs",
    "the immune system", "solar panels", "ancient Egypt", "bread baking", "gardening", "inflation",
    "the Olympic Games", "rainforests", "social media", "the solar system", "antibiotics", "public libraries",
    "marathon training", "budgeting", "time management", "birds migrating", "glaciers", "cryptography",
    "the Great Wall of China", "smartphones", "ocean tides", "meditation", "wind turbines", "tea",
    "the Renaissance", "robots", "nutrition", "volunteering", "mountain hiking", "city planning", "bicycles",
    "languages", "friendship", "job interviews", "pandas", "space telescopes", "electricity", "DNA",
    "the Industrial Revolution", "podcasts", "fire safety", "whales", "deserts", "museums", "airplanes",
    "composting", "snow", "pizza", "video games", "democracy", "bridges", "vitamins", "rivers", "trains",
)  # fmt: skip

TEMPLATES = (
    "Explain {t} to a ten-year-old.",
    "What are three interesting facts about {t}?",
    "Write a short story that involves {t}.",
    "Give me a list of tips related to {t}.",
    "Write a short email to a friend about {t}.",
    "What are the pros and cons of {t}?",
    "Describe the history of {t} in a few paragraphs.",
    "Why is {t} important?",
    "Write a poem about {t}.",
    "How would you teach a beginner about {t}?",
    "Summarize what scientists know about {t}.",
    "What questions do people often ask about {t}? Answer two of them.",
    "Write a news article about a recent event involving {t}.",
    "Compare {t} and {u}.",
    "Write a short blog post on {t}.",
    "What is a common misconception about {t}?",
    "Create a quiz with three questions about {t}.",
    "Give step-by-step instructions for a project about {t}.",
)

SUMMARY_TEMPLATES = (
    "Summarize the following article in a few sentences.\n\n{a}",
    "{a}\n\nWrite a short summary of the text above.",
    "Give a one-paragraph summary of this text:\n\n{a}",
    "Read the article and list its main points.\n\n{a}",
)


OPENERS = (
    "How do", "How does", "How can I", "How should I", "Why do", "Why does", "Why is", "What is the difference between",
    "What causes", "What should I", "What are", "Is it true that", "Can you explain", "Write a", "Write an",
    "Suggest", "Draft a", "Rewrite this sentence", "Plan a", "Give me a", "Explain", "Describe", "Create a", "List",
    "Help me", "Compose a", "Recommend", "Summarize",
)  # fmt: skip


@dataclass(frozen=True)
class Prompt:
    source: str  # sampled | opened | template | summary | long-summary, or a kind (ROUND1's names, ROUND2)
    text: str
    history: tuple[str, ...] = ()  # earlier turns, user and assistant alternating (a second turn's first exchange)

    @property
    def key(self) -> str:
        """What identifies the prompt in a data file: its text after its history (as `record_key` reads it)."""
        return "\x1f".join((*self.history, self.text))


def record_key(record: dict[str, Any]) -> str:
    """`Prompt.key` of a self-distillation record."""
    return "\x1f".join((*record.get("history", ()), record["prompt"]))


def template_prompts(rng: random.Random) -> list[Prompt]:
    out = []
    for t in TOPICS:
        for tpl in TEMPLATES:
            out.append(Prompt("template", tpl.format(t=t, u=rng.choice(TOPICS))))
    rng.shuffle(out)
    return out


NAMES = ("Ava", "Noah", "Mia", "Leo", "Zara", "Ivan", "Nora", "Omar", "Kai", "Lucia", "Tom", "Hana", "Raj", "Elsa")
ITEMS = ("apples", "marbles", "pencils", "cookies", "stamps", "books", "shells", "cards", "eggs", "balloons")

WRITING_FORMS = (
    "a short blog post (about 200 words)", "a persuasive paragraph", "a product description", "a short speech",
    "a diary entry", "a cover letter for a summer job", "a limerick", "a travel guide entry", "a restaurant review",
    "a motivational message", "a newsletter introduction", "a polite complaint letter", "a short fairy tale",
    "an opening paragraph for a novel", "a thank-you note", "a social media post",
)  # fmt: skip
ROLES = (
    "a medieval blacksmith", "a ship's captain in 1750", "a detective in 1920s London", "a friendly household robot",
    "a park ranger", "a chef in a busy kitchen", "an astronaut on a space station", "a village librarian",
    "a famous inventor", "a dragon who guards a mountain", "a taxi driver in a big city", "a beekeeper",
    "a football coach at half time", "a museum night guard", "a wizard's apprentice", "a mountain guide",
)  # fmt: skip
SITUATIONS = (
    "A child asks you what your job is like. Answer in character.",
    "Describe the hardest day you ever had.",
    "Give advice to someone who wants to do what you do.",
    "Introduce yourself to a new neighbour.",
    "Tell a visitor about the most valuable thing you own.",
    "Someone doubts that your work matters. Convince them.",
    "Describe what you see from where you are standing right now.",
)
CODE_TASKS = (
    "checks whether a string is a palindrome", "returns the n-th Fibonacci number", "counts the words in a sentence",
    "removes duplicates from a list while keeping the order", "finds the second largest number in a list",
    "reverses the order of the words in a sentence", "converts a temperature from Celsius to Fahrenheit",
    "checks whether a number is prime", "merges two sorted lists into one sorted list", "flattens a nested list",
    "counts the vowels in a string", "returns the factorial of n", "computes the average of a list of numbers",
    "groups words by their first letter", "returns the most common character in a string",
    "checks whether two strings are anagrams", "converts a Roman numeral to an integer",
    "finds all pairs in a list that add up to a target", "capitalises the first letter of every word",
    "returns the digits of an integer as a list",
)  # fmt: skip
LANGS = ("Python", "Python", "JavaScript", "Java", "C", "Go")
CODE_FOLLOWS = ("", " Add a short docstring.", " Include two example calls.", " Explain how it works.")
PHENOMENA = (
    "a rainbow forms", "vaccines train the immune system", "a refrigerator keeps food cold",
    "plants turn sunlight into sugar", "earthquakes happen", "batteries store energy", "airplanes stay in the air",
    "GPS finds your position", "the heart pumps blood", "lightning forms", "a compass works",
    "solar panels make electricity", "sound travels through air", "the greenhouse effect works",
    "muscles get stronger after exercise", "bread rises", "a camera lens focuses light", "volcanoes erupt",
    "the kidneys clean the blood", "a nuclear power plant makes electricity", "clouds form", "soap removes grease",
)  # fmt: skip
STEM_FORMS = ("Explain how {p}.", "Can you explain why {p}, step by step?", "Describe the science behind how {p}.")
HUMANITIES = (
    "Discuss how {e} changed everyday life.", "What were the main causes and effects of {e}?",
    "How did {e} influence art and culture?", "What can people today learn from {e}?",
    "Compare life before and after {e}.",
)  # fmt: skip
EVENTS = (
    "the invention of writing", "the Industrial Revolution", "the spread of railways", "the fall of the Roman Empire",
    "the Renaissance", "the invention of the telephone", "the abolition of slavery", "the growth of cities",
    "the first newspapers", "public schooling", "the invention of photography", "the Olympic Games' revival",
    "the age of exploration", "the spread of the internet", "the invention of the bicycle", "the end of the Cold War",
)  # fmt: skip
QA_FORMS = (
    "What is {t} and why does it matter?", "How does {t} affect everyday life?",
    "What is one surprising fact about {t}?", "What do most people get wrong about {t}?",
    "Who benefits most from {t}, and why?", "How has {t} changed over time?",
    "What is the best way to learn about {t}?",
)  # fmt: skip

# composed foreign sentences: subject x predicate x tail, per language (each combination is grammatical)
FOREIGN = {
    "German": (
        ("Mein Bruder", "Die Lehrerin", "Unser Nachbar", "Das kleine Mädchen", "Der alte Bäcker", "Meine Tante"),
        ("liest jeden Abend ein Buch", "kocht gern Suppe mit frischem Gemüse", "fährt mit dem Fahrrad zur Arbeit",
         "spielt am Wochenende Schach", "trinkt morgens immer einen starken Kaffee", "geht oft im Park spazieren",
         "hat gestern einen Brief an die Stadt geschrieben", "möchte nächstes Jahr nach Italien reisen"),
        ("", " am Sonntag", ", wenn es nicht regnet", ", obwohl es schon spät ist", " seit vielen Jahren"),
    ),
    "French": (
        ("Mon frère", "La voisine", "Notre professeur", "La petite fille", "Le vieux boulanger", "Ma cousine"),
        ("lit un livre chaque soir", "prépare une soupe aux légumes", "va au travail à vélo",
         "joue aux échecs le week-end", "boit toujours un café le matin", "se promène souvent dans le parc",
         "a écrit une lettre au maire hier", "veut voyager en Espagne l'année prochaine"),
        ("", " le dimanche", ", quand il ne pleut pas", ", même s'il est déjà tard", " depuis des années"),
    ),
    "Spanish": (
        ("Mi hermano", "La vecina", "Nuestro profesor", "La niña", "El viejo panadero", "Mi prima"),
        ("lee un libro cada noche", "prepara una sopa de verduras", "va al trabajo en bicicleta",
         "juega al ajedrez los fines de semana", "siempre toma un café por la mañana", "pasea a menudo por el parque",
         "escribió ayer una carta al alcalde", "quiere viajar a Francia el año que viene"),
        ("", " los domingos", ", cuando no llueve", ", aunque ya es tarde", " desde hace muchos años"),
    ),
    "Italian": (
        ("Mio fratello", "La vicina", "Il nostro insegnante", "La bambina", "Il vecchio fornaio", "Mia cugina"),
        ("legge un libro ogni sera", "prepara una zuppa di verdure", "va al lavoro in bicicletta",
         "gioca a scacchi nel fine settimana", "beve sempre un caffè la mattina", "passeggia spesso nel parco",
         "ha scritto ieri una lettera al sindaco", "vuole viaggiare in Grecia l'anno prossimo"),
        ("", " la domenica", ", quando non piove", ", anche se è già tardi", " da molti anni"),
    ),
}  # fmt: skip
ENGLISH = (
    ("My grandfather", "The new teacher", "Our neighbour", "A young doctor", "The team captain", "My best friend"),
    ("bakes bread every morning", "walked to the station in the rain", "is learning to play the piano",
     "forgot the keys at the office", "wants to open a small bookshop", "planted three apple trees last spring"),
    ("", " because the buses were late", " before the sun came up", " with a big smile", " for the first time"),
)  # fmt: skip

EXTRACT = (
    "every name of a person, place or organisation", "every number and what it counts", "the three main claims",
    "every date or time and what happens then", "the key terms, each with a one-line definition",
    "every action someone is advised to take",
)  # fmt: skip
EXTRACT_FORMS = (
    "Extract {w} from the text below and return them as a JSON list.\n\n{a}",
    "Read the text and list {w}.\n\n{a}",
    "{a}\n\nFrom the text above, extract {w} as a table with two columns.",
)
RAG_FORMS = (
    "Answer the question using the passages below.\n\n{p}\n\nQuestion: {q}",
    "Use only the information in these passages to answer.\n\n{p}\n\nQuestion: {q}",
    "{p}\n\nBased on the passages above, answer: {q}",
)
FOLLOW_UPS = (
    "Now rewrite your answer in about half as many words.", "Can you give a concrete example?",
    "Turn your answer into a bulleted list.", "What would be a good title for this?",
    "Explain the most important point in more detail.", "Rewrite it so that a five-year-old understands it.",
    "Now write the same thing as a short poem.", "What are the weaknesses of your answer?",
    "Thanks! Can you add one more idea?", "Make it more formal.",
)  # fmt: skip
SUMMARY_FORMS = (*SUMMARY_TEMPLATES, "Summarize the following text in {n} sentences:\n\n{a}")


def _writing(rng: random.Random) -> str:
    extra = rng.choice(("", " Keep it upbeat.", " Include one surprising detail.", " End with a question."))
    return f"Write {rng.choice(WRITING_FORMS)} about {rng.choice(TOPICS)}.{extra}"


def _roleplay(rng: random.Random) -> str:
    return f"Pretend you are {rng.choice(ROLES)}. {rng.choice(SITUATIONS)}"


def _reasoning(rng: random.Random) -> str:
    a, b, c, d = rng.sample(NAMES, 4)
    forms = (
        f"{a} is older than {b}, and {b} is older than {c}. Is {a} older than {c}? Explain your reasoning.",
        f"{a}, {b} and {c} finish a race. {a} is not last, and {c} finishes right after {b}. Who wins? Explain.",
        f"If every {rng.choice(ITEMS)[:-1]} in the box is red and some red things are heavy, must some of them be "
        "heavy? Explain.",
        f"{a} says {b} is lying. {b} says {c} is lying. {c} says both {a} and {b} are lying. Who tells the truth?",
        f"{a}, {b}, {c} and {d} sit around a square table. {a} sits opposite {b}, and {c} sits to {a}'s left. "
        f"Who sits to {a}'s right?",
        f"A clock shows {rng.randint(1, 12)} o'clock. What time will it show after {rng.randint(13, 50)} hours? "
        "Explain step by step.",
    )
    return rng.choice(forms)


def _math(rng: random.Random) -> str:
    a, b, c = rng.randint(2, 19), rng.randint(1, 60), rng.randint(61, 200)
    forms = (
        f"Solve for x: {a}x + {b} = {c}. Show each step.",
        f"What is {rng.choice((5, 12, 15, 20, 35, 40))}% of {rng.randint(2, 90) * 10}?",
        f"Find the area of a triangle with a base of {a} cm and a height of {rng.randint(2, 30)} cm.",
        f"Simplify the fraction {a * 6}/{a * 8} and explain how.",
        f"A circle has a radius of {a} m. What are its circumference and its area?",
        f"What is the least common multiple of {a} and {rng.randint(2, 30)}? Show your method.",
        f"Expand and simplify ({rng.randint(1, 9)}x + {a})(x - {rng.randint(1, 9)}).",
        f"The sum of two consecutive integers is {2 * b + 1}. What are they?",
    )
    return rng.choice(forms)


def _coding(rng: random.Random) -> str:
    return f"Write a {rng.choice(LANGS)} function that {rng.choice(CODE_TASKS)}.{rng.choice(CODE_FOLLOWS)}"


def _stem(rng: random.Random) -> str:
    return rng.choice(STEM_FORMS).format(p=rng.choice(PHENOMENA))


def _humanities(rng: random.Random) -> str:
    return rng.choice(HUMANITIES).format(e=rng.choice(EVENTS))


def _qa(rng: random.Random) -> str:
    return rng.choice(QA_FORMS).format(t=rng.choice(TOPICS))


def _math_reasoning(rng: random.Random) -> str:
    n, item = rng.choice(NAMES), rng.choice(ITEMS)
    a, b, c, p = rng.randint(3, 40), rng.randint(2, 9), rng.randint(3, 24), rng.randint(2, 15)
    forms = (
        f"{n} has {a} {item}. {n} buys {b} bags with {c} {item} in each, then gives away {a // 2}. How many {item} "
        f"does {n} have now?",
        f"A train travels {a * 10} km in {b} hours. At the same speed, how far does it go in {b + c} hours?",
        f"{n} saves ${p} every week. How many weeks does it take to save at least ${a * 10}?",
        f"A shop sells {item} for ${p} each. {n} buys {b} of them and pays with a $100 note. How much change is there?",
        f"There are {a + 20} students in a class and {rng.choice((10, 20, 25, 40))}% of them walk to school. "
        "How many students do not walk?",
        f"{n} reads {c} pages a day. The book has {c * a + b} pages. After how many days is the book finished?",
        f"A recipe needs {b} eggs for {p} pancakes. How many eggs are needed for {p * c} pancakes?",
        f"{n} is {a} years old and {n}'s mother is {b} times as old. How old will the mother be in {c} years?",
    )
    return rng.choice(forms) + rng.choice(("", " Think step by step.", " Explain your answer."))


def _compose(rng: random.Random, parts: tuple[tuple[str, ...], ...]) -> str:
    subject, predicate, tail = (rng.choice(p) for p in parts)
    return f"{subject} {predicate}{tail}."


def _translation(rng: random.Random) -> str:
    lang = rng.choice(tuple(FOREIGN))
    if rng.random() < 0.6:
        text = " ".join(_compose(rng, FOREIGN[lang]) for _ in range(rng.randint(1, 2)))
        return f'Translate the following {lang} text into English: "{text}"'
    text = " ".join(_compose(rng, ENGLISH) for _ in range(rng.randint(1, 2)))
    return f'Translate this sentence into {lang}: "{text}"'


@dataclass(frozen=True)
class Kind:
    name: str
    make: Callable[[random.Random], str]


ROUND1 = tuple(
    Kind(n, f)
    for n, f in (
        ("writing", _writing), ("roleplay", _roleplay), ("reasoning", _reasoning), ("math", _math),
        ("coding", _coding), ("stem", _stem), ("humanities", _humanities), ("qa", _qa),
        ("math_reasoning", _math_reasoning), ("translation", _translation),
    )
)  # fmt: skip
ROUND2 = ("summarization", "rag", "extraction", "turn2")


def round1_prompts(per_kind: int, rng: random.Random, exclude: frozenset[str] = frozenset()) -> list[Prompt]:
    """`per_kind` distinct prompts of each round-1 kind (fewer where the templates run out), shuffled."""
    out: list[Prompt] = []
    for kind in ROUND1:
        seen: set[str] = set()
        for _ in range(per_kind * 20):
            if len(seen) == per_kind:
                break
            text = kind.make(rng)
            if text not in exclude:
                seen.add(text)
        out += [Prompt(kind.name, t) for t in sorted(seen)]
    rng.shuffle(out)
    return out


def round2_prompts(answered: list[tuple[str, str]], share: float, rng: random.Random) -> list[Prompt]:
    """From (prompt, answer) pairs of round 1 (long answers only): about `share` of them become each round-2 kind.

    RAG's passages are 1-2 of these answers, one of them the answer to the question asked (the round-1 prompt)."""
    n = round(len(answered) * share)
    out: list[Prompt] = []
    for _, ans in rng.sample(answered, min(n, len(answered))):
        out.append(Prompt("summarization", rng.choice(SUMMARY_FORMS).format(a=ans, n=rng.randint(2, 4))))
    for _, ans in rng.sample(answered, min(n, len(answered))):
        w = rng.choice(EXTRACT)
        out.append(Prompt("extraction", rng.choice(EXTRACT_FORMS).format(w=w, a=ans)))
    for prompt, ans in rng.sample(answered, min(n, len(answered))):
        others = [a for p, a in rng.sample(answered, min(3, len(answered))) if p != prompt][: rng.randint(0, 1)]
        passages = [ans, *others]
        rng.shuffle(passages)
        text = "\n\n".join(f"Passage {i + 1}: {p}" for i, p in enumerate(passages))
        out.append(Prompt("rag", rng.choice(RAG_FORMS).format(p=text, q=prompt)))
    for prompt, ans in rng.sample(answered, min(n, len(answered))):
        out.append(Prompt("turn2", rng.choice(FOLLOW_UPS), history=(prompt, ans)))
    return out
