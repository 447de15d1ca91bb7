"""The bundled review corpus: short product and place reviews, generated deterministically from a seed.

A review is an opening sentence (neutral: what was visited, bought or watched) followed by aspect
sentences whose sentiment follows the review's mood (positive, negative or mixed), and a closing verdict.
Openings are the prompts of the default task; the rest is the response. A fixed share of the distinct
openings is held out of every training file, so held-out prompts are never seen in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

# topic -> (openings, aspects); an opening has a {when} slot, an aspect is what a sentence judges.
TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "restaurant": (
        [
            "We had dinner at the little Italian place downtown {when}.",
            "I took my parents to the new sushi bar {when}.",
            "We ordered lunch at the corner bistro {when}.",
            "I tried the Thai restaurant near the station {when}.",
            "We booked a table at the steak house {when}.",
        ],
        [
            "the food",
            "the service",
            "the waiter",
            "the dessert",
            "the pasta",
            "the soup",
            "the wine list",
            "the prices",
            "the portions",
            "the music",
        ],
    ),
    "hotel": (
        [
            "We stayed at the harbor hotel {when}.",
            "I booked a room at the airport hotel {when}.",
            "We spent a weekend at the mountain lodge {when}.",
            "I checked into the city center hotel {when}.",
            "We rented a suite at the beach resort {when}.",
        ],
        [
            "the room",
            "the bed",
            "the staff",
            "the breakfast",
            "the pool",
            "the bathroom",
            "the view",
            "the location",
            "the front desk",
            "the wifi",
        ],
    ),
    "phone": (
        [
            "I bought this phone {when}.",
            "My sister gave me this phone {when}.",
            "I switched to this phone {when}.",
            "I ordered this phone online {when}.",
            "I upgraded to this phone {when}.",
        ],
        [
            "the screen",
            "the battery",
            "the camera",
            "the speaker",
            "the price",
            "the design",
            "the charger",
            "the software",
            "the case",
            "the sound",
        ],
    ),
    "laptop": (
        [
            "I bought this laptop for work {when}.",
            "I got this laptop for school {when}.",
            "I ordered this laptop online {when}.",
            "My company gave me this laptop {when}.",
            "I replaced my old computer with this laptop {when}.",
        ],
        [
            "the keyboard",
            "the battery",
            "the screen",
            "the trackpad",
            "the fan",
            "the speakers",
            "the price",
            "the build quality",
            "the charger",
            "the performance",
        ],
    ),
    "movie": (
        [
            "I watched this movie with my family {when}.",
            "We saw this film at the cinema {when}.",
            "I streamed this movie at home {when}.",
            "My friends took me to see this film {when}.",
            "I rented this movie {when}.",
        ],
        [
            "the story",
            "the acting",
            "the ending",
            "the soundtrack",
            "the dialogue",
            "the lead actor",
            "the special effects",
            "the pacing",
            "the humor",
            "the characters",
        ],
    ),
    "book": (
        [
            "I read this novel on holiday {when}.",
            "I bought this book at the airport {when}.",
            "My book club picked this novel {when}.",
            "I borrowed this book from the library {when}.",
            "I listened to this book on a long drive {when}.",
        ],
        [
            "the plot",
            "the writing",
            "the characters",
            "the ending",
            "the first chapter",
            "the dialogue",
            "the cover",
            "the pacing",
            "the main character",
            "the twist",
        ],
    ),
    "headphones": (
        [
            "I bought these headphones {when}.",
            "I ordered these earbuds online {when}.",
            "I got these headphones as a gift {when}.",
            "I picked up these headphones at the mall {when}.",
            "I tried these headphones at the gym {when}.",
        ],
        [
            "the sound",
            "the bass",
            "the fit",
            "the battery",
            "the noise cancelling",
            "the case",
            "the microphone",
            "the price",
            "the controls",
            "the cable",
        ],
    ),
    "cafe": (
        [
            "I stopped at the coffee shop on main street {when}.",
            "We met friends at the new cafe {when}.",
            "I worked from the bakery cafe {when}.",
            "I grabbed breakfast at the corner cafe {when}.",
            "We tried the cafe by the park {when}.",
        ],
        [
            "the coffee",
            "the pastries",
            "the barista",
            "the seating",
            "the music",
            "the prices",
            "the tea",
            "the sandwiches",
            "the wifi",
            "the service",
        ],
    ),
    "gym": (
        [
            "I joined this gym {when}.",
            "I signed up for classes at this gym {when}.",
            "I tried a free week at this gym {when}.",
            "I started training at this gym {when}.",
            "My friend brought me to this gym {when}.",
        ],
        [
            "the equipment",
            "the trainers",
            "the classes",
            "the locker room",
            "the showers",
            "the price",
            "the staff",
            "the music",
            "the hours",
            "the parking",
        ],
    ),
    "airline": (
        [
            "I flew with this airline {when}.",
            "We booked a flight with this airline {when}.",
            "I took a long flight with this airline {when}.",
            "We flew to the coast with this airline {when}.",
            "I traveled for work with this airline {when}.",
        ],
        [
            "the crew",
            "the seats",
            "the food",
            "the boarding",
            "the legroom",
            "the check in",
            "the entertainment",
            "the luggage service",
            "the price",
            "the schedule",
        ],
    ),
    "game": (
        [
            "I played this game all weekend {when}.",
            "I bought this game on sale {when}.",
            "My kids and I tried this game {when}.",
            "I downloaded this game {when}.",
            "I finished this game {when}.",
        ],
        [
            "the graphics",
            "the story",
            "the controls",
            "the music",
            "the levels",
            "the multiplayer",
            "the price",
            "the characters",
            "the ending",
            "the difficulty",
        ],
    ),
    "camera": (
        [
            "I bought this camera for a trip {when}.",
            "I ordered this camera online {when}.",
            "I used this camera at a wedding {when}.",
            "I upgraded to this camera {when}.",
            "I borrowed this camera from a friend {when}.",
        ],
        [
            "the pictures",
            "the lens",
            "the battery",
            "the autofocus",
            "the menu",
            "the grip",
            "the video",
            "the flash",
            "the price",
            "the screen",
        ],
    ),
}

WHEN = [
    "last week",
    "last month",
    "yesterday",
    "on Friday",
    "over the weekend",
    "this spring",
    "a few days ago",
    "in December",
]

POSITIVE = [
    "great",
    "excellent",
    "wonderful",
    "amazing",
    "fantastic",
    "lovely",
    "perfect",
    "delightful",
    "superb",
    "impressive",
    "pleasant",
    "good",
    "nice",
    "awesome",
    "outstanding",
    "enjoyable",
    "brilliant",
    "fabulous",
]
NEGATIVE = [
    "terrible",
    "awful",
    "horrible",
    "disappointing",
    "bad",
    "poor",
    "dreadful",
    "boring",
    "annoying",
    "useless",
    "ugly",
    "mediocre",
    "frustrating",
    "pathetic",
    "lousy",
    "unpleasant",
    "miserable",
    "sad",
]
NEUTRAL = ["fine", "okay", "average", "standard", "normal", "typical", "ordinary", "simple"]

POS_TEMPLATES = [
    "{A} {was} {adj}.",
    "{A} {was} really {adj}.",
    "I loved {a}.",
    "{A} {was} {adj} and {adj2}.",
    "I was happy with {a}.",
    "{A} exceeded my expectations.",
    "{A} {was} honestly {adj}.",
    "We enjoyed {a} a lot.",
]
NEG_TEMPLATES = [
    "{A} {was} {adj}.",
    "{A} {was} really {adj}.",
    "I hated {a}.",
    "{A} {was} {adj} and {adj2}.",
    "I was unhappy with {a}.",
    "{A} let me down.",
    "{A} {was} honestly {adj}.",
    "We regretted {a}.",
]
NEU_TEMPLATES = [
    "{A} {was} {adj}.",
    "{A} {was} pretty {adj}.",
    "{A} {was} about what I expected.",
    "I did not notice {a} much.",
]
CONNECT_POS = ["", "", "Also,", "Best of all,", "On top of that,", "Luckily,"]
CONNECT_NEG = ["", "", "Also,", "Worst of all,", "On top of that,", "Sadly,"]
CLOSE_POS = [
    "I would definitely recommend it.",
    "I will come back again!",
    "Five stars from me.",
    "Highly recommended!",
    "I am very happy with it.",
    "Totally worth the money.",
]
CLOSE_NEG = [
    "I would not recommend it.",
    "Never again.",
    "What a waste of money.",
    "One star from me.",
    "I am very disappointed.",
    "Save your money.",
]
CLOSE_NEU = ["It was okay overall.", "Not bad, not great.", "It did the job.", "Maybe I will try it again."]

MOODS = {"positive": 0.85, "negative": 0.15, "mixed": 0.5}


@dataclass
class Review:
    topic: str
    mood: str
    opening: str
    body: str

    @property
    def text(self) -> str:
        return f"{self.opening} {self.body}"


def all_openings() -> list[tuple[str, str]]:
    """Every distinct (topic, opening) of the task, in a fixed order."""
    return [
        (topic, opening.format(when=when))
        for topic, (openings, _) in TOPICS.items()
        for opening in openings
        for when in WHEN
    ]


def split_openings(heldout_share: float = 0.15, seed: int = 0) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, held-out) openings: a seeded, disjoint split of all openings."""
    openings = all_openings()
    random.Random(seed).shuffle(openings)
    cut = int(len(openings) * heldout_share)
    return openings[cut:], openings[:cut]


def _sentence(rng: random.Random, aspect: str, polarity: str, first: bool) -> str:
    if polarity == "neutral":
        template, words, connectors = rng.choice(NEU_TEMPLATES), NEUTRAL, [""]
    elif polarity == "positive":
        template, words, connectors = rng.choice(POS_TEMPLATES), POSITIVE, CONNECT_POS
    else:
        template, words, connectors = rng.choice(NEG_TEMPLATES), NEGATIVE, CONNECT_NEG
    adj, adj2 = rng.sample(words, 2)
    connector = "" if first else rng.choice(connectors)
    cap = aspect[0].upper() + aspect[1:]
    plural = aspect.endswith("s") and not aspect.endswith("ss")
    body = template.format(A=cap, a=aspect, adj=adj, adj2=adj2, was="were" if plural else "was")
    if connector:
        body = f"{connector} {body[0].lower()}{body[1:]}" if not body.startswith("I ") else f"{connector} {body}"
    return body


def make_review(rng: random.Random, topic: str, opening: str, mood: str | None = None) -> Review:
    """One review for an opening: 1-5 aspect sentences whose sentiment follows the mood, then a verdict."""
    mood = mood or rng.choice(list(MOODS))
    p_positive = MOODS[mood]
    aspects = rng.sample(TOPICS[topic][1], rng.randint(1, 5))
    sentences, score = [], 0
    for i, aspect in enumerate(aspects):
        roll = rng.random()
        polarity = "neutral" if roll < 0.1 else ("positive" if rng.random() < p_positive else "negative")
        score += {"positive": 1, "negative": -1, "neutral": 0}[polarity]
        sentences.append(_sentence(rng, aspect, polarity, first=(i == 0)))
    if rng.random() < 0.85:
        closing = rng.choice(CLOSE_POS if score > 0 else CLOSE_NEG if score < 0 else CLOSE_NEU)
        sentences.append(closing)
    return Review(topic=topic, mood=mood, opening=opening, body=" ".join(sentences))


def generate_reviews(n: int, openings: list[tuple[str, str]], seed: int) -> list[Review]:
    rng = random.Random(seed)
    return [make_review(rng, *rng.choice(openings)) for _ in range(n)]
