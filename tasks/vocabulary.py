"""Word lists the templated generators draw from (names, things to buy, things to share, topics).

Kept apart from the templates so the variety can grow without touching any generator logic. Everything
here is plain data; none of it contains commas inside an entry, which the instruction task relies on
when a prompt forbids commas.
"""
from __future__ import annotations

NAMES = (
    "Maya", "Liam", "Aisha", "Noah", "Sofia", "Kenji", "Amara", "Lucas", "Priya", "Mateo",
    "Zara", "Ethan", "Leila", "Omar", "Hana", "Diego", "Chloe", "Tariq", "Nina", "Kofi",
    "Elena", "Ravi", "Grace", "Yusuf", "Ingrid", "Tomas", "Mei", "Samuel", "Fatima", "Jonas",
)

# (plural noun, lowest whole-dollar price, highest whole-dollar price)
SHOP_ITEMS = (
    ("notebooks", 1, 6), ("pens", 1, 3), ("apples", 1, 2), ("movie tickets", 6, 15), ("sandwiches", 3, 9),
    ("comic books", 2, 8), ("plant pots", 3, 12), ("t-shirts", 8, 20), ("candles", 2, 7), ("bus passes", 2, 5),
    ("mugs", 4, 11), ("puzzles", 5, 18), ("bags of rice", 3, 10), ("paint brushes", 1, 6), ("socks", 2, 6),
)

SHARE_OBJECTS = (
    "marbles", "stickers", "cookies", "trading cards", "pencils", "stamps", "seashells", "grapes", "beads",
    "crayons",
)

# (plural, singular) of things that are naturally split into fractions.
DIVISIBLE_OBJECTS = (
    ("pizzas", "pizza"), ("cakes", "cake"), ("pies", "pie"), ("chocolate bars", "chocolate bar"),
    ("loaves of bread", "loaf of bread"), ("watermelons", "watermelon"),
)

# (vehicle or traveller, low speed, high speed) in km per hour
TRAVELLERS = (
    ("a cyclist", 10, 25), ("a train", 40, 120), ("a bus", 30, 70), ("a runner", 6, 14), ("a boat", 10, 40),
    ("a car", 40, 100),
)

# (ingredient with unit, thing made)
RECIPES = (
    ("cups of flour", "cookies"), ("eggs", "pancakes"), ("cups of milk", "muffins"),
    ("spoons of sugar", "cups of tea"), ("cups of rice", "servings"),
)

# (place, what it is measured for)
RECTANGLES = ("garden", "playground", "swimming pool", "parking lot", "classroom floor", "vegetable patch")

SALE_ITEMS = ("jacket", "bicycle", "lamp", "backpack", "pair of shoes", "board game", "desk chair", "guitar")

# topic -> nouns that fit it naturally (instruction prompts ask for them; sentences say "the <noun>")
TOPICS = {
    "a walk by the river": ("river", "stone", "bridge", "water"),
    "a visit to the library": ("books", "shelf", "librarian", "silence"),
    "learning to cook": ("kitchen", "recipe", "onion", "pan"),
    "a rainy afternoon": ("rain", "window", "tea", "blanket"),
    "the night sky": ("stars", "moon", "clouds", "telescope"),
    "a small vegetable garden": ("soil", "tomato", "seeds", "sun"),
    "a long train journey": ("train", "station", "ticket", "landscape"),
    "a school science fair": ("project", "volcano", "judges", "poster"),
    "a mountain hike": ("trail", "summit", "boots", "wind"),
    "a busy market": ("stalls", "fruit", "crowd", "bargain"),
    "a first day at a new job": ("desk", "team", "coffee", "badge"),
    "an old family photograph": ("grandmother", "smile", "frame", "memory"),
}

# Sentences for instruction reference responses: no commas, apostrophes or hyphens, so every reasonable
# word counter agrees on their length and the no_commas constraint can always be met.
OPENING_SENTENCES = (
    "This is a short note about {topic}.",
    "Here are a few thoughts on {topic}.",
    "I want to tell you about {topic}.",
)
KEYWORD_SENTENCES = (
    "The {word} stayed on my mind all day.",
    "I noticed the {word} right away.",
    "Nothing compared to the {word}.",
    "We talked about the {word} for a while.",
)
FILLER_SENTENCES = (
    "It was a calm and simple experience.",
    "There is always something new to notice.",
    "It is a good way to spend an hour.",
    "I would happily do it again.",
    "Time seemed to slow down for a while.",
    "Small details made the day feel special.",
    "I came home tired but happy.",
    "It reminded me to pay attention to little moments.",
    "I hope you get to try it soon.",
    "Everyone should make time for this.",
)
OPENERS = ("Hello there.", "Good morning.", "Quick note.", "Dear friend.")
CLOSERS = ("Thanks.", "See you soon.", "Take care.", "That is all for now.")
# Words an instruction may forbid; the generator only forbids ones its reference response avoids.
FORBIDDABLE_WORDS = (
    "very", "really", "just", "actually", "basically", "literally", "awesome", "amazing", "stuff",
    "totally", "honestly", "super",
)
INSTRUCTION_STEMS = (
    "Write a short note about {topic}.",
    "Write a brief message to a friend about {topic}.",
    "Describe {topic}.",
    "Write a short journal entry about {topic}.",
)
