"""Reference data for the SIS generator: names, places, CIP codes.

Kept apart from the generator so the generator reads as logic. The names deliberately include what
breaks naive pipelines: diacritics (é, ñ, ü, ø, ı, ễ), apostrophes (O'Brien), hyphens (Smith-Jones,
Min-jun), particles with spaces (de la Cruz) and mononyms. Countries are ISO 3166-1 alpha-2;
places are real city / province / postal-code combinations.
"""

from __future__ import annotations

from typing import NamedTuple


class NamePool(NamedTuple):
    """Given names by gender and family names of one naming tradition."""

    male: tuple[str, ...]
    female: tuple[str, ...]
    family: tuple[str, ...]
    mononym_share: float = 0.0  # share of people with a family name only (first_name NULL)


POOLS: dict[str, NamePool] = {
    "chinese": NamePool(
        ("Wei", "Haoran", "Zhiwei", "Yifan", "Jun", "Tianyu", "Zihao", "Bowen", "Xuan"),
        ("Xinyi", "Mengyao", "Jing", "Yutong", "Shuang", "Ruoxi", "Jiayi", "Lan", "Xiaoling"),
        (
            "Wang",
            "Li",
            "Zhang",
            "Liu",
            "Chen",
            "Yang",
            "Huang",
            "Zhao",
            "Wu",
            "Zhou",
            "Xu",
            "Sun",
            "Lü",
            "Guo",
            "Ouyang",
        ),
    ),
    "cantonese": NamePool(
        ("Ka-ho", "Chun-kit", "Wing-yan", "Kevin", "Jason"),
        ("Hoi-yan", "Mei-ling", "Wing-sze", "Karen", "Queenie"),
        ("Chan", "Wong", "Leung", "Cheung", "Lau", "Ho", "Ng", "Yeung"),
    ),
    "indian": NamePool(
        ("Aarav", "Rohan", "Vikram", "Arjun", "Siddharth", "Karthik", "Rahul", "Aditya"),
        ("Priya", "Ananya", "Sneha", "Divya", "Lakshmi", "Kavya", "Ishita", "Meera"),
        ("Patel", "Sharma", "Reddy", "Iyer", "Gupta", "Nair", "Venkataraman", "Chatterjee", "Krishnamurthy", "Singh"),
    ),
    "korean": NamePool(
        ("Min-jun", "Seo-jun", "Ji-hoon", "Hyun-woo", "Dong-hyun"),
        ("Seo-yeon", "Ji-woo", "Ha-eun", "Soo-ah", "Min-seo"),
        ("Kim", "Lee", "Park", "Choi", "Jung", "Kang", "Yoon"),
    ),
    "japanese": NamePool(
        ("Haruto", "Sōta", "Ren", "Takumi", "Kenji"),
        ("Yui", "Sakura", "Aoi", "Hina", "Yōko"),
        ("Satō", "Suzuki", "Takahashi", "Tanaka", "Watanabe", "Itō"),
    ),
    "vietnamese": NamePool(
        ("Minh", "Huy", "Dũng", "Quang", "Đức"),
        ("Linh", "Trang", "Ngọc", "Thảo", "Hương"),
        ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Võ"),
    ),
    "indonesian": NamePool(
        ("Budi", "Agus", "Rizky", "Dimas", "Sutrisno"),
        ("Siti", "Dewi", "Putri", "Ayu", "Wulan"),
        ("Santoso", "Wijaya", "Hidayat", "Pratama", "Setiawan", "Suharto"),
        mononym_share=0.35,
    ),
    "hispanic": NamePool(
        ("José", "Alejandro", "Andrés", "Sebastián", "Joaquín", "Diego", "Martín", "Iñigo"),
        ("María", "Sofía", "Valentina", "Lucía", "Camila", "Ximena", "Begoña", "Inés"),
        (
            "García",
            "Hernández",
            "Núñez",
            "Peña",
            "Muñoz",
            "Ibáñez",
            "de la Cruz",
            "Rodríguez-Ortiz",
            "Gómez",
            "Castañeda",
        ),
    ),
    "portuguese": NamePool(
        ("João", "Gonçalo", "Thiago", "Vinícius", "Luís"),
        ("Conceição", "Beatriz", "Letícia", "Mariana", "Ana Júlia"),
        ("Gonçalves", "da Silva", "Araújo", "Magalhães", "Conceição", "Souza"),
    ),
    "nordic": NamePool(
        ("Søren", "Bjørn", "Mads", "Anders", "Øystein"),
        ("Ingrid", "Sigrún", "Maja", "Åsa", "Freja"),
        ("Østergaard", "Jørgensen", "Bjørnstad", "Ødegård", "Mikkelsen", "Hansen"),
    ),
    "german": NamePool(
        ("Jürgen", "Lukas", "Maximilian", "Jörg", "Felix"),
        ("Anna", "Lena", "Käthe", "Katharina", "Jülide"),
        ("Müller", "Schröder", "Weiß", "Schäfer", "Becker", "von Heßberg"),
    ),
    "french": NamePool(
        ("Jérôme", "Benoît", "Théo", "François", "Raphaël"),
        ("Hélène", "Chloé", "Zoë", "Éloïse", "Amélie"),
        ("Lefèvre", "Bélanger", "Dubois", "Côté", "Moreau", "D'Amboise"),
    ),
    "irish": NamePool(
        ("Seán", "Ciarán", "Liam", "Pádraig", "Conor"),
        ("Siobhán", "Aoife", "Niamh", "Saoirse", "Róisín"),
        ("O'Brien", "O'Connor", "Ó Súilleabháin", "McAllister", "Fitzgerald", "Murphy"),
    ),
    "turkish": NamePool(
        ("Mehmet", "Emre", "Burak", "Oğuz", "Çağrı"),
        ("Ayşe", "Zeynep", "Elif", "Şule", "Gülşen"),
        ("Yılmaz", "Çelik", "Öztürk", "Şahin", "Aydın", "Doğan"),
    ),
    "arabic": NamePool(
        ("Mohammed", "Abdullah", "Faisal", "Omar", "Khalid"),
        ("Fatima", "Noura", "Aisha", "Layla", "Reem"),
        ("Al-Saud", "Al-Harbi", "Al-Qahtani", "Al-Farsi", "Haddad", "Abdel-Rahman"),
    ),
    "nigerian": NamePool(
        ("Chinedu", "Oluwaseun", "Emeka", "Tunde", "Ifeanyi"),
        ("Ngozi", "Adaeze", "Funmilayo", "Chiamaka", "Yetunde"),
        ("Okafor", "Adeyemi", "Okonkwo", "Balogun", "Eze", "Nwachukwu"),
    ),
    "african_french": NamePool(
        ("Mamadou", "Ousmane", "Cheikh"),
        ("Aminata", "Fatou", "Awa"),
        ("N'Diaye", "Diallo", "Sow", "Faye", "N'Dour"),
    ),
    "american": NamePool(
        ("James", "Michael", "Ethan", "Noah", "William", "Tyler", "Jacob", "DeShawn", "Logan"),
        ("Emily", "Madison", "Olivia", "Ava", "Hannah", "Abigail", "Jasmine", "Chloe", "Grace"),
        (
            "Smith",
            "Johnson",
            "Williams",
            "Brown",
            "Miller",
            "Davis",
            "Smith-Jones",
            "O'Neill",
            "McDonald",
            "Washington",
            "Anderson",
            "Thompson",
            "Van Buren",
            "DiMaggio",
        ),
    ),
}

# country -> (name pools with weights, phone country code)
COUNTRIES: dict[str, tuple[tuple[tuple[str, int], ...], str]] = {
    "CN": ((("chinese", 1),), "86"),
    "HK": ((("cantonese", 1),), "852"),
    "TW": ((("chinese", 1),), "886"),
    "IN": ((("indian", 1),), "91"),
    "KR": ((("korean", 1),), "82"),
    "JP": ((("japanese", 1),), "81"),
    "VN": ((("vietnamese", 1),), "84"),
    "ID": ((("indonesian", 1),), "62"),
    "MX": ((("hispanic", 1),), "52"),
    "CO": ((("hispanic", 1),), "57"),
    "ES": ((("hispanic", 1),), "34"),
    "BR": ((("portuguese", 1),), "55"),
    "NO": ((("nordic", 1),), "47"),
    "DK": ((("nordic", 1),), "45"),
    "DE": ((("german", 1), ("turkish", 1)), "49"),
    "FR": ((("french", 3), ("african_french", 1)), "33"),
    "IE": ((("irish", 1),), "353"),
    "TR": ((("turkish", 1),), "90"),
    "SA": ((("arabic", 1),), "966"),
    "NG": ((("nigerian", 1),), "234"),
    "SN": ((("african_french", 1),), "221"),
    "CA": ((("american", 3), ("french", 1), ("chinese", 1)), "1"),
    "US": (
        (
            ("american", 12),
            ("hispanic", 3),
            ("chinese", 1),
            ("indian", 1),
            ("korean", 1),
            ("irish", 1),
            ("vietnamese", 1),
        ),
        "1",
    ),
}

# Roughly the mix of countries of citizenship at a large US university.
INTERNATIONAL_COUNTRY_WEIGHTS: tuple[tuple[str, int], ...] = (
    ("CN", 24),
    ("IN", 24),
    ("KR", 6),
    ("VN", 4),
    ("TW", 3),
    ("HK", 2),
    ("JP", 2),
    ("ID", 2),
    ("MX", 3),
    ("CO", 2),
    ("BR", 3),
    ("ES", 1),
    ("NO", 1),
    ("DK", 1),
    ("DE", 2),
    ("FR", 2),
    ("IE", 1),
    ("TR", 3),
    ("SA", 4),
    ("NG", 5),
    ("SN", 1),
    ("CA", 4),
)

# country -> real (city, province/region, postal code or None) combinations
FOREIGN_PLACES: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "CN": (
        ("Beijing", "Beijing", "100080"),
        ("Shanghai", "Shanghai", "200030"),
        ("Chengdu", "Sichuan", "610041"),
        ("Guangzhou", "Guangdong", "510275"),
    ),
    "HK": (("Kowloon", "Kowloon", None), ("Sha Tin", "New Territories", None)),
    "TW": (("Taipei", "Taipei City", "106"), ("Hsinchu", "Hsinchu City", "300")),
    "IN": (
        ("Mumbai", "Maharashtra", "400076"),
        ("Bengaluru", "Karnataka", "560034"),
        ("Hyderabad", "Telangana", "500032"),
        ("Chennai", "Tamil Nadu", "600036"),
    ),
    "KR": (("Seoul", "Seoul", "03722"), ("Busan", "Busan", "46241")),
    "JP": (("Tokyo", "Tokyo", "113-8654"), ("Suita", "Osaka", "565-0871")),
    "VN": (("Hà Nội", "Hà Nội", "100000"), ("Thành phố Hồ Chí Minh", "Hồ Chí Minh", "700000")),
    "ID": (("Jakarta", "DKI Jakarta", "10110"), ("Bandung", "Jawa Barat", "40132")),
    "MX": (
        ("Guadalajara", "Jalisco", "44100"),
        ("Monterrey", "Nuevo León", "64849"),
        ("Ciudad de México", "Ciudad de México", "04510"),
    ),
    "CO": (("Bogotá", "Bogotá D.C.", "110111"), ("Medellín", "Antioquia", "050010")),
    "ES": (("Madrid", "Comunidad de Madrid", "28040"), ("Sevilla", "Andalucía", "41004")),
    "BR": (("São Paulo", "São Paulo", "05508-000"), ("Rio de Janeiro", "Rio de Janeiro", "22451-900")),
    "NO": (("Oslo", "Oslo", "0313"), ("Tromsø", "Troms", "9019")),
    "DK": (("København", "Hovedstaden", "2100"), ("Aarhus", "Midtjylland", "8000")),
    "DE": (("München", "Bayern", "80333"), ("Köln", "Nordrhein-Westfalen", "50923")),
    "FR": (("Paris", "Île-de-France", "75005"), ("Lyon", "Auvergne-Rhône-Alpes", "69007")),
    "IE": (("Dublin", "Leinster", "D04 V1W8"), ("Cork", "Munster", "T12 YN60")),
    "TR": (("İstanbul", "İstanbul", "34342"), ("Ankara", "Ankara", "06800")),
    "SA": (("Riyadh", "Riyadh", "11564"), ("Jeddah", "Makkah", "21589")),
    "NG": (("Lagos", "Lagos", "101017"), ("Abuja", "FCT", "900211")),
    "SN": (("Dakar", "Dakar", "10700"), ("Saint-Louis", "Saint-Louis", "32000")),
    "CA": (("Toronto", "Ontario", "M5S 1A1"), ("Montréal", "Québec", "H3A 0G4")),
}

# country -> street names as they are written locally
FOREIGN_STREETS: dict[str, tuple[str, ...]] = {
    "CN": ("Zhongguancun Street", "Huaihai Road", "Renmin South Road"),
    "HK": ("Nathan Road", "Tai Po Road"),
    "TW": ("Roosevelt Road", "Guangfu Road"),
    "IN": ("Linking Road", "MG Road", "Anna Salai"),
    "KR": ("Gangnam-daero", "Yonsei-ro", "Haeundae-ro"),
    "JP": ("Hongō", "Yamadaoka"),
    "VN": ("Nguyễn Huệ", "Phố Huế", "Đường Láng"),
    "ID": ("Jalan Sudirman", "Jalan Dago"),
    "MX": ("Avenida Insurgentes Sur", "Calle Morelos", "Avenida Vallarta"),
    "CO": ("Carrera Séptima", "Calle 10"),
    "ES": ("Calle de Alcalá", "Avenida de la Constitución"),
    "BR": ("Rua Augusta", "Avenida Paulista"),
    "NO": ("Karl Johans gate", "Storgata"),
    "DK": ("Nørrebrogade", "Strøget"),
    "DE": ("Leopoldstraße", "Zülpicher Straße"),
    "FR": ("Rue de la Paix", "Rue Mouffetard", "Quai Saint-Antoine"),
    "IE": ("O'Connell Street", "Grafton Street"),
    "TR": ("İstiklal Caddesi", "Atatürk Bulvarı"),
    "SA": ("King Fahd Road", "Prince Sultan Street"),
    "NG": ("Adeola Odeku Street", "Herbert Macaulay Way"),
    "SN": ("Avenue Cheikh Anta Diop", "Rue Blaise Diagne"),
    "CA": ("Bloor Street West", "Rue Sainte-Catherine"),
}

# Real US (city, full state name, ZIP) combinations. The first block is around the school.
SCHOOL_TOWN: tuple[tuple[str, str, str], ...] = (
    ("Champaign", "Illinois", "61820"),
    ("Champaign", "Illinois", "61821"),
    ("Urbana", "Illinois", "61801"),
    ("Urbana", "Illinois", "61802"),
    ("Savoy", "Illinois", "61874"),
)
US_PLACES: tuple[tuple[str, str, str], ...] = (
    ("Chicago", "Illinois", "60616"),
    ("Naperville", "Illinois", "60540"),
    ("Ann Arbor", "Michigan", "48104"),
    ("Austin", "Texas", "78705"),
    ("Houston", "Texas", "77005"),
    ("Berkeley", "California", "94704"),
    ("San Jose", "California", "95112"),
    ("Boston", "Massachusetts", "02115"),
    ("Madison", "Wisconsin", "53703"),
    ("Columbus", "Ohio", "43201"),
    ("Seattle", "Washington", "98105"),
    ("Tempe", "Arizona", "85281"),
    ("West Lafayette", "Indiana", "47906"),
    ("State College", "Pennsylvania", "16801"),
    ("Gainesville", "Florida", "32601"),
    ("Atlanta", "Georgia", "30332"),
    ("New York", "New York", "10027"),
    ("Pittsburgh", "Pennsylvania", "15213"),
    ("Minneapolis", "Minnesota", "55455"),
    ("Boulder", "Colorado", "80302"),
    ("Salt Lake City", "Utah", "84112"),
    ("Honolulu", "Hawaii", "96822"),
    ("Washington", "District of Columbia", "20052"),
    ("Newark", "New Jersey", "07102"),
    ("Providence", "Rhode Island", "02912"),
    ("Anchorage", "Alaska", "99508"),
)
US_STREETS: tuple[str, ...] = (
    "W Green St",
    "E Springfield Ave",
    "S First St",
    "N Lincoln Ave",
    "W Church St",
    "S Neil St",
    "E Armory Ave",
    "W University Ave",
    "S Goodwin Ave",
    "N Prospect Ave",
    "Oak St",
    "Maple Ave",
    "Elm St",
    "Martin Luther King Jr Blvd",
    "Washington St",
)
US_AREA_CODES: tuple[str, ...] = ("217", "312", "773", "630", "734", "512", "510", "617", "206")

CIP_ACADEMIC: tuple[str, ...] = (
    "11.0701",  # Computer Science
    "14.0901",  # Computer Engineering
    "52.0201",  # Business Administration and Management
    "27.0101",  # Mathematics
    "40.0801",  # Physics
    "26.0101",  # Biology
    "45.0601",  # Economics
    "24.0101",  # Liberal Arts and Sciences
    "30.7001",  # Data Science (CIP 2020)
    "51.3801",  # Registered Nursing
    "14.0801",  # Civil Engineering
    "14.1901",  # Mechanical Engineering
    "52.0301",  # Accounting
)
CIP_VOCATIONAL: tuple[str, ...] = (
    "47.0604",  # Automobile/Automotive Mechanics Technology
    "49.0102",  # Airline/Commercial/Professional Pilot and Flight Crew
    "12.0503",  # Culinary Arts/Chef Training
    "46.0302",  # Electrician
)
CIP_LANGUAGE = "32.0109"  # Second Language Learning (intensive English)

OTHER_COST_REMARKS = "Books, supplies and health insurance"
SCHOOL_FUND_REMARKS: tuple[str, ...] = (
    "Graduate research assistantship",
    "Graduate teaching assistantship",
    "International merit scholarship",
    "Tuition waiver",
)
OTHER_FUND_SOURCES: tuple[str, ...] = (
    "Saudi Arabian Cultural Mission",
    "CAPES (Brazil)",
    "Fulbright Program",
    "Government of Indonesia LPDP",
    "Employer sponsorship",
    "Family friend (notarized letter)",
)

# Fictional employers for practical training (CPT, STEM OPT): no real company.
EMPLOYERS: tuple[str, ...] = (
    "Prairie Widget Works",
    "Illini Data Labs",
    "Boneyard Analytics",
    "Corn Belt Robotics",
    "Sangamon Software Cooperative",
    "Kaskaskia Bioworks",
)
