"""Fixed vocabulary of the generated e-shop: names, places, code lists, shop configuration.

Static GUIDs here are constants (not seeded) because a real shop's payment/shipping methods
and categories do not change between exports.
"""

from __future__ import annotations

import unicodedata

SHOP_URL = "https://www.sandbox-shop.cz"
ESHOP_ID = 222651


def ascii_slug(text: str, sep: str = "-") -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()
    out = []
    for ch in plain.lower():
        out.append(ch if ch.isalnum() else sep)
    return sep.join(p for p in "".join(out).split(sep) if p)


# (first, last) per gender; female surnames in their Czech form.
MALE_FIRST = [
    "Jan",
    "Petr",
    "Josef",
    "Pavel",
    "Martin",
    "Tomáš",
    "Jaroslav",
    "Miroslav",
    "Zdeněk",
    "Lukáš",
    "Jakub",
    "Ondřej",
    "Michal",
    "David",
    "Marek",
    "Filip",
    "Vojtěch",
    "Adam",
    "Radek",
    "Karel",
]
FEMALE_FIRST = [
    "Jana",
    "Marie",
    "Eva",
    "Hana",
    "Anna",
    "Lenka",
    "Kateřina",
    "Lucie",
    "Věra",
    "Alena",
    "Petra",
    "Veronika",
    "Martina",
    "Tereza",
    "Jitka",
    "Michaela",
    "Barbora",
    "Klára",
    "Zuzana",
    "Ivana",
]
MALE_LAST = [
    "Novák",
    "Svoboda",
    "Novotný",
    "Dvořák",
    "Černý",
    "Procházka",
    "Kučera",
    "Veselý",
    "Horák",
    "Němec",
    "Marek",
    "Pospíšil",
    "Pokorný",
    "Hájek",
    "Král",
    "Jelínek",
    "Růžička",
    "Beneš",
    "Fiala",
    "Sedláček",
]
FEMALE_LAST = [
    "Nováková",
    "Svobodová",
    "Novotná",
    "Dvořáková",
    "Černá",
    "Procházková",
    "Kučerová",
    "Veselá",
    "Horáková",
    "Němcová",
    "Marková",
    "Pospíšilová",
    "Pokorná",
    "Hájková",
    "Králová",
    "Jelínková",
    "Růžičková",
    "Benešová",
    "Fialová",
    "Sedláčková",
]
MALE_FIRST_A = [ascii_slug(x, ".") for x in MALE_FIRST]
FEMALE_FIRST_A = [ascii_slug(x, ".") for x in FEMALE_FIRST]
MALE_LAST_A = [ascii_slug(x, ".") for x in MALE_LAST]
FEMALE_LAST_A = [ascii_slug(x, ".") for x in FEMALE_LAST]

MAIL_DOMAINS = ["seznam.cz", "email.cz", "gmail.com", "centrum.cz", "post.cz", "example.cz", "volny.cz"]

# country -> (currency, phone prefix, language, [(city, zip)], [streets])
COUNTRIES: dict[str, tuple[str, str, str, list[tuple[str, str]], list[str]]] = {
    "CZ": (
        "CZK",
        "+420",
        "cs",
        [
            ("Praha 2", "120 00"),
            ("Praha 4", "140 00"),
            ("Praha 10", "100 00"),
            ("Brno", "602 00"),
            ("Ostrava", "702 00"),
            ("Plzeň", "301 00"),
            ("Liberec", "460 01"),
            ("Olomouc", "779 00"),
            ("České Budějovice", "370 01"),
            ("Hradec Králové", "500 02"),
            ("Pardubice", "530 02"),
            ("Zlín", "760 01"),
            ("Jihlava", "586 01"),
            ("Kladno", "272 01"),
            ("Opava", "746 01"),
        ],
        [
            "Korunní",
            "Vinohradská",
            "Masarykova",
            "Nádražní",
            "Husova",
            "Palackého",
            "Komenského",
            "Jiráskova",
            "Smetanova",
            "Školní",
            "Lidická",
            "Sokolská",
            "Zahradní",
            "Polní",
            "Krátká",
        ],
    ),
    "SK": (
        "EUR",
        "+421",
        "sk",
        [
            ("Bratislava", "811 01"),
            ("Košice", "040 01"),
            ("Žilina", "010 01"),
            ("Nitra", "949 01"),
            ("Trnava", "917 01"),
            ("Banská Bystrica", "974 01"),
        ],
        ["Hlavná", "Obchodná", "Štúrova", "Mlynská", "Záhradnícka", "Hviezdoslavova"],
    ),
    "AT": (
        "EUR",
        "+43",
        "de",
        [("Wien", "1010"), ("Graz", "8010"), ("Linz", "4020")],
        ["Hauptstraße", "Bahnhofstraße", "Gartengasse"],
    ),
    "DE": (
        "EUR",
        "+49",
        "de",
        [("Dresden", "01067"), ("München", "80331"), ("Berlin", "10115")],
        ["Hauptstraße", "Schulstraße", "Bergstraße"],
    ),
}
# cumulative weights: ~89 % CZ, ~8 % SK, the rest AT/DE -> about 10 % EUR orders
COUNTRY_CUM = [("CZ", 0.89), ("SK", 0.97), ("AT", 0.985), ("DE", 1.0)]

COMPANY_WORDS = ["Alfa", "Beta", "Kovo", "Agro", "Elektro", "Stavby", "Dřevo", "Textil", "Servis", "Obchod"]
COMPANY_FORMS = ["s.r.o.", "a.s.", "spol. s r.o.", "v.o.s."]

CUSTOMER_GROUPS = [
    {"id": 1, "name": "Registrovaní zákazníci"},
    {"id": 2, "name": "VIP"},
    {"id": 3, "name": "Velkoobchod"},
]
PRICE_LISTS = [{"id": 1, "name": "Základní ceník"}, {"id": 2, "name": "Velkoobchodní ceník"}]

ORDER_STATUSES = {
    -1: "Nevyřízená",
    -2: "Vyřizuje se",
    -3: "Vyřízena",
    -4: "Stornována",
    5: "Čeká na platbu",
    6: "Odesláno",
}
STATUS_META = [  # (id, system, order, markAsPaid, color, backgroundColor)
    (-1, True, 1, False, "#000000", "#ffffff"),
    (-2, True, 2, False, "#000000", "#fff1a8"),
    (5, False, 3, False, "#ffffff", "#c0392b"),
    (6, False, 4, False, "#ffffff", "#2980b9"),
    (-3, True, 5, True, "#ffffff", "#27ae60"),
    (-4, True, 6, False, "#ffffff", "#7f8c8d"),
]

# (guid, name, price in CZK cents, shippingCompanyCode)
SHIPPINGS = [
    ("2ec88ea7-3fb0-11e2-a723-705ab6a2ba75", "PPL", 9900, "ppl"),
    ("2ec8a1d3-3fb0-11e2-a723-705ab6a2ba75", "Zásilkovna", 7900, "zasilkovna"),
    ("2ec8b4a1-3fb0-11e2-a723-705ab6a2ba75", "Česká pošta - Balík Do ruky", 11900, "ceskaPosta"),
    ("2ec8c6f0-3fb0-11e2-a723-705ab6a2ba75", "DPD", 10900, "dpd"),
    ("2ec8d902-3fb0-11e2-a723-705ab6a2ba75", "Osobní odběr", 0, None),
]
SHIPPING_CUM = [0.35, 0.70, 0.82, 0.93, 1.0]

# (guid, name, billingMethod id, billingMethod name, price in CZK cents)
PAYMENTS = [
    ("6f2c8e36-3faf-11e2-a723-705ab6a2ba75", "Bankovní převod", 2, "Převodem", 0),
    ("6f2c9a1b-3faf-11e2-a723-705ab6a2ba75", "Dobírka", 1, "Dobírka", 3900),
    ("6f2ca7c4-3faf-11e2-a723-705ab6a2ba75", "Platba kartou online", 4, "Kartou", 0),
    ("6f2cb3e0-3faf-11e2-a723-705ab6a2ba75", "Hotově při převzetí", 3, "Hotově", 0),
]
PAYMENT_CUM = [0.30, 0.55, 0.92, 1.0]

CATEGORIES = [  # (guid, name, parent index or None)
    ("5a6b7c8d-1b2c-11ee-b534-2a01067a25a9", "Kuchyně", None),
    ("5a6b8e12-1b2c-11ee-b534-2a01067a25a9", "Nádobí", 0),
    ("5a6b9f33-1b2c-11ee-b534-2a01067a25a9", "Hrnky a šálky", 0),
    ("5a6bb041-1b2c-11ee-b534-2a01067a25a9", "Bydlení", None),
    ("5a6bc15e-1b2c-11ee-b534-2a01067a25a9", "Textil", 3),
    ("5a6bd27a-1b2c-11ee-b534-2a01067a25a9", "Dekorace", 3),
    ("5a6be398-1b2c-11ee-b534-2a01067a25a9", "Zahrada", None),
    ("5a6bf4b5-1b2c-11ee-b534-2a01067a25a9", "Dárky", None),
    ("5a6c05d2-1b2c-11ee-b534-2a01067a25a9", "Knihy", None),
    ("5a6c16ef-1b2c-11ee-b534-2a01067a25a9", "Služby", None),
]
BRANDS = [
    ("smalt-co", "Smalt Co."),
    ("tescoma", "Tescoma"),
    ("banquet", "Banquet"),
    ("orion", "Orion"),
    ("lamart", "Lamart"),
    ("cesky-porcelan", "Český porcelán"),
    ("dekor-plus", "Dekor Plus"),
    ("zahradnik", "Zahradník"),
    ("knihovna", "Knihovna"),
    ("bazarek", "Bazárek"),
]
SUPPLIERS = [
    ("9c1d2e3f-1b2c-11ee-b534-2a01067a25a9", "Velkoobchod Morava s.r.o."),
    ("9c1d3f40-1b2c-11ee-b534-2a01067a25a9", "Import Praha a.s."),
]

NOUNS = [
    "Hrnek",
    "Konvice",
    "Talíř",
    "Miska",
    "Sklenice",
    "Prkénko",
    "Pánev",
    "Hrnec",
    "Nůž",
    "Ubrus",
    "Svíčka",
    "Váza",
    "Deka",
    "Polštář",
    "Konev",
    "Květináč",
    "Kniha",
    "Zástěra",
    "Podnos",
    "Dóza",
]
ADJECTIVES = [
    "smaltovaný",
    "keramický",
    "skleněný",
    "dřevěný",
    "nerezový",
    "lněný",
    "bavlněný",
    "porcelánový",
    "litinový",
    "bambusový",
]
MODELS = ["Classic", "Nova", "Lux", "Mini", "Maxi", "Eko", "Retro", "Praktik", "Linea", "Bohemia"]
COLOR_PARAM = ("Barva", ["modrá", "červená", "zelená", "černá", "bílá", "šedá"])
SIZE_PARAM = ("Velikost", ["S", "M", "L", "XL", "XXL"])
FLAGS = [("new", "Novinka"), ("tip", "Tip"), ("action", "Akce")]

AVAILABILITIES = [{"id": 1, "name": "Skladem"}, {"id": 2, "name": "Do 3 dnů"}, {"id": 3, "name": "Na dotaz"}]
SOLD_OUT = {"id": -1, "name": "Vyprodáno"}
VISIBILITY_CUM = [
    ("visible", 0.86),
    ("hidden", 0.91),
    ("detail-only", 0.94),
    ("show-registered", 0.96),
    ("block-unregistered", 0.97),
    ("blocked", 0.985),
    ("cash-desk-only", 1.0),
]

COUPONS = ["SLEVA10", "JARO15", "VIP20", "LETO100", "VANOCE"]
CUSTOMER_REMARKS = [
    "Prosím zabalit jako dárek",
    "Doručit odpoledne",
    "Volejte před doručením",
    "Nechat u sousedů",
    "Bez papírové faktury",
]
