//! Deterministic fake data: a seeded generator and plausible names, dates
//! and clinical details. The same seed always gives the same content, so a
//! lure can be rendered again at any time from its stored material.

/// SplitMix64: small, fast, and good enough for fake data (not for secrets;
/// secrets come from the operating system's generator).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[usize::try_from(self.below(items.len() as u64)).unwrap_or(0)]
    }

    pub fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + u8::try_from(self.below(10)).unwrap_or(0)))
            .collect()
    }

    /// A date `YYYYMMDD` between `from_year` and `to_year`.
    pub fn date(&mut self, from_year: u64, to_year: u64) -> (u64, u64, u64) {
        let y = from_year + self.below(to_year - from_year + 1);
        let m = 1 + self.below(12);
        let d = 1 + self.below(28);
        (y, m, d)
    }
}

pub const FIRST_NAMES: &[&str] = &[
    "James",
    "Mary",
    "Robert",
    "Patricia",
    "John",
    "Jennifer",
    "Michael",
    "Linda",
    "David",
    "Elizabeth",
    "William",
    "Barbara",
    "Richard",
    "Susan",
    "Joseph",
    "Jessica",
    "Thomas",
    "Sarah",
    "Carlos",
    "Karen",
    "Daniel",
    "Lisa",
    "Matthew",
    "Nancy",
    "Anthony",
    "Betty",
    "Mark",
    "Sandra",
    "Steven",
    "Ashley",
    "Andrew",
    "Kimberly",
    "Joshua",
    "Emily",
    "Kevin",
    "Donna",
    "Brian",
    "Michelle",
    "Omar",
    "Priya",
    "Wei",
    "Fatima",
    "Hiroshi",
    "Amara",
    "Luis",
    "Ingrid",
    "Mateo",
    "Aisha",
    "Noah",
    "Olivia",
];

pub const LAST_NAMES: &[&str] = &[
    "Smith",
    "Johnson",
    "Williams",
    "Brown",
    "Jones",
    "Garcia",
    "Miller",
    "Davis",
    "Rodriguez",
    "Martinez",
    "Hernandez",
    "Lopez",
    "Gonzalez",
    "Wilson",
    "Anderson",
    "Thomas",
    "Taylor",
    "Moore",
    "Jackson",
    "Martin",
    "Lee",
    "Perez",
    "Thompson",
    "White",
    "Harris",
    "Sanchez",
    "Clark",
    "Ramirez",
    "Lewis",
    "Robinson",
    "Walker",
    "Young",
    "Allen",
    "King",
    "Wright",
    "Scott",
    "Torres",
    "Nguyen",
    "Hill",
    "Flores",
    "Patel",
    "Kim",
    "Chen",
    "Okafor",
    "Schmidt",
    "Novak",
    "Haddad",
    "Ivanova",
    "Costa",
    "Murphy",
];

pub const STREETS: &[&str] = &[
    "Oak St",
    "Maple Ave",
    "Cedar Ln",
    "Pine St",
    "Elm St",
    "Washington Ave",
    "Lake Dr",
    "Hillcrest Rd",
    "Park Ave",
    "Sunset Blvd",
    "River Rd",
    "Church St",
    "Highland Ave",
    "Meadow Ln",
    "Forest Dr",
];

pub const CITIES: &[(&str, &str, &str)] = &[
    ("Springfield", "IL", "62704"),
    ("Columbus", "OH", "43215"),
    ("Madison", "WI", "53703"),
    ("Albany", "NY", "12207"),
    ("Sacramento", "CA", "95814"),
    ("Austin", "TX", "78701"),
    ("Raleigh", "NC", "27601"),
    ("Denver", "CO", "80202"),
];

/// (ICD-10 code, description).
pub const DIAGNOSES: &[(&str, &str)] = &[
    ("I10", "Essential (primary) hypertension"),
    ("E11.9", "Type 2 diabetes mellitus without complications"),
    ("J18.9", "Pneumonia, unspecified organism"),
    ("I21.4", "Non-ST elevation myocardial infarction"),
    ("N17.9", "Acute kidney failure, unspecified"),
    ("A41.9", "Sepsis, unspecified organism"),
    (
        "J44.1",
        "Chronic obstructive pulmonary disease with exacerbation",
    ),
    ("I50.9", "Heart failure, unspecified"),
    (
        "S72.001A",
        "Fracture of unspecified part of neck of right femur",
    ),
    ("K35.80", "Unspecified acute appendicitis"),
    ("U07.1", "COVID-19"),
    ("R07.9", "Chest pain, unspecified"),
];

pub const PHYSICIANS: &[&str] = &[
    "Okonkwo^Adaeze",
    "Lindqvist^Erik",
    "Ramanathan^Priya",
    "Castillo^Diego",
    "Feldman^Rachel",
    "Adeyemi^Tunde",
    "Novak^Petra",
    "Whitaker^James",
];

pub const WARDS: &[&str] = &["ICU", "CCU", "ED", "MED4", "SURG2", "ONC3", "NICU", "RAD"];

/// A fake patient.
#[derive(Debug, Clone)]
pub struct Patient {
    pub mrn: String,
    pub first: &'static str,
    pub last: &'static str,
    pub birth: (u64, u64, u64),
    pub sex: &'static str,
    pub street: String,
    pub city: &'static str,
    pub state: &'static str,
    pub zip: &'static str,
    pub phone: String,
    pub diagnosis: (&'static str, &'static str),
    pub ward: &'static str,
    pub physician: &'static str,
}

impl Patient {
    pub fn generate(rng: &mut Rng) -> Self {
        let (city, state, zip) = rng.pick(CITIES);
        Patient {
            mrn: format!("MRN{}", rng.digits(7)),
            first: rng.pick(FIRST_NAMES),
            last: rng.pick(LAST_NAMES),
            birth: rng.date(1936, 2015),
            sex: if rng.below(2) == 0 { "F" } else { "M" },
            street: format!("{} {}", 10 + rng.below(9000), rng.pick(STREETS)),
            city,
            state,
            zip,
            phone: format!(
                "({}) {}-{}",
                200 + rng.below(700),
                200 + rng.below(700),
                rng.digits(4)
            ),
            diagnosis: rng.pick(DIAGNOSES),
            ward: rng.pick(WARDS),
            physician: rng.pick(PHYSICIANS),
        }
    }

    pub fn birth_compact(&self) -> String {
        format!("{:04}{:02}{:02}", self.birth.0, self.birth.1, self.birth.2)
    }

    pub fn birth_iso(&self) -> String {
        format!(
            "{:04}-{:02}-{:02}",
            self.birth.0, self.birth.1, self.birth.2
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_data() {
        let a = Patient::generate(&mut Rng::new(7));
        let b = Patient::generate(&mut Rng::new(7));
        let c = Patient::generate(&mut Rng::new(8));
        assert_eq!(a.mrn, b.mrn);
        assert_eq!(a.last, b.last);
        assert_ne!((a.mrn.as_str(), a.first), (c.mrn.as_str(), c.first));
    }
}
