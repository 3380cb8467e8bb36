//! Tokenising, light lemmatising and the lexical guards.
//!
//! Mean-pooled embeddings barely move when one word that changes the answer changes (a
//! number, "ascending" → "descending", "French" → "German", a negation, swapped subject and
//! object). These checks look at exactly those words and veto the hit outright.

// foldhash, not SipHash: the guards hash every word of both texts on every verification, and
// SipHash was ~8% of a semantic hit's CPU. Its seeds are still random (per process and per
// map), so a prompt cannot be crafted offline to collide.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

/// One word of a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Word {
    /// Lower-cased surface form.
    pub lower: String,
    /// Light lemma (plural and possessive stripped) used for overlap.
    pub lemma: String,
    /// Starts with an upper-case letter and is not the first word of a sentence.
    pub capitalised: bool,
    /// Not a stop word, not a number, not punctuation.
    pub content: bool,
    /// Canonical name when the word names a language.
    pub language: Option<&'static str>,
}

/// A text cut into words, with the sets the guards and features need.
#[derive(Debug, Clone)]
pub(crate) struct Analysed {
    pub words: Vec<Word>,
    /// Normalised numbers ("2", "two", "2nd" → "2"; "3.50" stays).
    pub numbers: Vec<String>,
    pub negated: bool,
    /// How many negations ("not", "no", "never", "n't" …): one added to a question that
    /// already had one ("nobody can" → "nobody can not") flips it too.
    pub negations: usize,
    /// Content lemmas in text order.
    pub content: Vec<String>,
    /// Named languages (natural and programming), canonical names.
    pub languages: HashSet<&'static str>,
    /// Units of measure and currencies, canonical names.
    pub units: HashSet<&'static str>,
    /// (opposition group, side) for every direction word present.
    pub directions: HashSet<(usize, u8)>,
    /// Capitalised content words (lower-cased) that are not languages.
    pub entities: HashSet<String>,
    /// Every mention of a name, repeats kept, for the guard only: the entities above plus
    /// camel-case names anywhere ("iPhone", "eBay", "macOS"), lemmas lower-cased.
    pub names: Vec<String>,
    /// First question word ("what", "why", "how", ...), if any.
    pub wh: Option<&'static str>,
    /// Role-bearing preposition → content lemma right after it.
    pub roles: Vec<(&'static str, String)>,
    /// Parts of the question: the questions asked (`?` after a word: "How safe is X? Does it
    /// help?" asks 2), or 2 for one with a second part ("who … and why", "… or vice versa").
    pub parts: usize,
    /// Content lemmas joined by "and" ("writing and speaking" → (writing, speaking)).
    pub coordinated: Vec<(String, String)>,
}

const STOP: &[&str] = &[
    "a",
    "an",
    "the",
    "and",
    "or",
    "but",
    "if",
    "then",
    "so",
    "of",
    "in",
    "on",
    "at",
    "by",
    "for",
    "with",
    "about",
    "as",
    "into",
    "to",
    "from",
    "up",
    "down",
    "out",
    "over",
    "under",
    "is",
    "are",
    "was",
    "were",
    "be",
    "been",
    "being",
    "am",
    "do",
    "does",
    "did",
    "doing",
    "done",
    "have",
    "has",
    "had",
    "having",
    "i",
    "me",
    "my",
    "mine",
    "myself",
    "we",
    "us",
    "our",
    "you",
    "your",
    "yours",
    "he",
    "him",
    "his",
    "she",
    "her",
    "it",
    "its",
    "they",
    "them",
    "their",
    "this",
    "that",
    "these",
    "those",
    "there",
    "here",
    "what",
    "which",
    "who",
    "whom",
    "whose",
    "why",
    "how",
    "when",
    "where",
    "can",
    "could",
    "should",
    "would",
    "will",
    "shall",
    "may",
    "might",
    "must",
    "some",
    "any",
    "all",
    "each",
    "every",
    "other",
    "such",
    "very",
    "really",
    "just",
    "also",
    "too",
    "than",
    "please",
    "kindly",
    "thanks",
    "thank",
    "hi",
    "hello",
    "hey",
    "help",
    "tell",
    "explain",
    "give",
    "get",
    "make",
    "want",
    "need",
    "like",
    "way",
    "ways",
    "best",
    "good",
    "one",
    "someone",
    "something",
    "anyone",
    "thing",
    "things",
    "much",
    "many",
    "more",
    "most",
    "s",
    "t",
    "d",
    "ll",
    "re",
    "ve",
    "m",
    "possible",
    "actually",
    "someone",
    "anybody",
    "somebody",
    "exactly",
    "briefly",
    "quick",
    "quickly",
    "let",
    "know",
    "go",
    "going",
    "use",
    "using",
    "used",
    "whats",
    "what's",
    "im",
    "i'm",
    "it's",
    "isn't",
    "via",
    "etc",
    "e.g",
    "ie",
    "eg",
    "while",
    "after",
    "before",
    "between",
];

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "without", "cannot", "nobody", "nothing", "none", "neither", "nor",
    "nowhere", "unable", "non",
];

/// Pairs of words that flip an answer. Group index = row; side 0 or 1.
const OPPOSITES: &[(&[&str], &[&str])] = &[
    (
        &["ascending", "ascend", "increasing", "asc"],
        &["descending", "descend", "decreasing", "desc"],
    ),
    (
        &[
            "increase",
            "increases",
            "increased",
            "raise",
            "raising",
            "grow",
        ],
        &[
            "decrease",
            "decreases",
            "decreased",
            "reduce",
            "reducing",
            "lower",
            "lowering",
            "shrink",
        ],
    ),
    (&["before"], &["after"]),
    (
        &[
            "min", "minimum", "minimal", "smallest", "least", "lowest", "shortest", "fewest",
        ],
        &[
            "max", "maximum", "maximal", "largest", "biggest", "highest", "longest", "greatest",
        ],
    ),
    (&["best", "top"], &["worst", "bottom"]),
    (
        &[
            "for",
            "pro",
            "pros",
            "support",
            "supporting",
            "favour",
            "favor",
        ],
        &["against", "con", "cons", "oppose", "opposing"],
    ),
    (
        &["advantage", "advantages", "benefit", "benefits"],
        &[
            "disadvantage",
            "disadvantages",
            "drawback",
            "drawbacks",
            "downside",
            "downsides",
        ],
    ),
    (
        &["encrypt", "encrypting", "encryption", "encode", "encoding"],
        &["decrypt", "decrypting", "decryption", "decode", "decoding"],
    ),
    (&["import", "importing"], &["export", "exporting"]),
    (&["upload", "uploading"], &["download", "downloading"]),
    (&["buy", "buying", "purchase"], &["sell", "selling"]),
    (&["gain", "gaining"], &["lose", "losing", "loss"]),
    (&["first", "earliest"], &["last", "latest"]),
    (&["above", "over"], &["below", "under"]),
    (&["more"], &["less", "fewer"]),
    (&["faster", "quicker"], &["slower"]),
    (&["better"], &["worse"]),
    (
        &["cheaper", "cheapest"],
        &["expensive", "pricier", "costlier"],
    ),
    (&["positive"], &["negative"]),
    (&["true"], &["false"]),
    (
        &["start", "starting", "begin", "beginning"],
        &["end", "ending", "stop", "stopping", "finish"],
    ),
    (&["left"], &["right"]),
    (&["north", "northern"], &["south", "southern"]),
    (&["east", "eastern"], &["west", "western"]),
    (
        &[
            "male", "men", "man", "boy", "boys", "husband", "father", "son",
        ],
        &[
            "female", "women", "woman", "girl", "girls", "wife", "mother", "daughter",
        ],
    ),
    (
        &["hot", "warm", "warmer", "hotter"],
        &["cold", "cool", "colder", "cooler"],
    ),
    (
        &["add", "adding", "insert", "inserting"],
        &["remove", "removing", "delete", "deleting"],
    ),
    (&["enable", "enabling"], &["disable", "disabling"]),
    (&["open", "opening"], &["close", "closing"]),
    (&["long"], &["short"]),
    (&["lowercase", "lower-case"], &["uppercase", "upper-case"]),
    (&["push", "pushing"], &["pull", "pulling"]),
    (&["win", "winning"], &["lose"]),
    (&["like", "love", "liking"], &["hate", "dislike", "hating"]),
    (&["legal"], &["illegal"]),
    (&["possible"], &["impossible"]),
    (&["rich"], &["poor"]),
    (&["young", "younger"], &["old", "older"]),
    (&["past"], &["future"]),
    (&["happy"], &["sad", "unhappy"]),
    (&["soft", "softer"], &["hard", "harder"]),
    (
        &["difference", "differences", "different", "differ"],
        &["similarity", "similarities", "similar", "same"],
    ),
    (
        &["easy", "easier", "easiest"],
        &["difficult", "harder", "hardest"],
    ),
    (
        &["strong", "stronger", "strength", "strengths"],
        &["weak", "weaker", "weakness", "weaknesses"],
    ),
    (&["heavy", "heavier"], &["light", "lighter"]),
    (&["wet"], &["dry"]),
    (&["high", "higher"], &["low"]),
    (&["big", "bigger", "large"], &["small", "smaller", "little"]),
    (&["early", "earlier"], &["late", "later"]),
    (
        &["inside", "internal", "indoor", "indoors"],
        &["outside", "external", "outdoor", "outdoors"],
    ),
    (&["public"], &["private"]),
    (&["most"], &["least"]),
    (&["input", "inputs"], &["output", "outputs"]),
    (&["send", "sending"], &["receive", "receiving"]),
    (
        &["accept", "accepting"],
        &["reject", "rejecting", "decline"],
    ),
    (
        &["allow", "allowed", "permit"],
        &["deny", "block", "blocked", "forbid", "forbidden"],
    ),
    (&["include", "including"], &["exclude", "excluding"]),
    (&["success", "succeed"], &["failure", "fail"]),
    (&["maximize", "maximise"], &["minimize", "minimise"]),
    (&["forward", "forwards"], &["backward", "backwards"]),
    (&["horizontal", "horizontally"], &["vertical", "vertically"]),
    (&["row", "rows"], &["column", "columns"]),
    (&["client"], &["server"]),
    (&["frontend", "front-end"], &["backend", "back-end"]),
    (&["parent"], &["child"]),
    (&["even"], &["odd"]),
    (&["prefix"], &["suffix"]),
    (&["agree"], &["disagree"]),
    (&["safe", "safer", "safest"], &["dangerous", "unsafe"]),
    (&["healthy", "healthier"], &["unhealthy"]),
    (&["synonym", "synonyms"], &["antonym", "antonyms"]),
    (&["friend", "friends"], &["enemy", "enemies"]),
];

/// Named languages, natural and programming: asking for an answer in, or about, one language
/// is a different question from the same in another.
const LANGUAGES: &[(&str, &[&str])] = &[
    ("english", &["english"]),
    ("french", &["french"]),
    ("german", &["german"]),
    ("spanish", &["spanish"]),
    ("italian", &["italian"]),
    ("portuguese", &["portuguese"]),
    ("russian", &["russian"]),
    ("chinese", &["chinese", "mandarin", "cantonese"]),
    ("japanese", &["japanese"]),
    ("korean", &["korean"]),
    ("arabic", &["arabic"]),
    ("hindi", &["hindi"]),
    ("dutch", &["dutch"]),
    ("swedish", &["swedish"]),
    ("polish", &["polish"]),
    ("turkish", &["turkish"]),
    ("greek", &["greek"]),
    ("latin", &["latin"]),
    ("hebrew", &["hebrew"]),
    ("tamil", &["tamil"]),
    ("urdu", &["urdu"]),
    ("bengali", &["bengali"]),
    ("python", &["python", "python3", "py"]),
    ("java", &["java"]),
    (
        "javascript",
        &["javascript", "js", "node", "nodejs", "node.js"],
    ),
    ("typescript", &["typescript", "ts"]),
    ("rust", &["rust"]),
    ("go", &["golang"]),
    ("c", &["c"]),
    ("c++", &["c++", "cpp"]),
    ("c#", &["c#", "csharp"]),
    ("ruby", &["ruby"]),
    ("php", &["php"]),
    ("swift", &["swift"]),
    ("kotlin", &["kotlin"]),
    ("scala", &["scala"]),
    ("haskell", &["haskell"]),
    ("perl", &["perl"]),
    ("sql", &["sql", "mysql", "postgresql", "postgres", "sqlite"]),
    ("bash", &["bash", "shell", "sh", "zsh"]),
    ("powershell", &["powershell"]),
    ("matlab", &["matlab"]),
    ("julia", &["julia"]),
    ("lua", &["lua"]),
    ("elixir", &["elixir"]),
    ("erlang", &["erlang"]),
    ("clojure", &["clojure"]),
    ("dart", &["dart"]),
    ("fortran", &["fortran"]),
    ("cobol", &["cobol"]),
    ("html", &["html"]),
    ("css", &["css"]),
];

const UNITS: &[(&str, &[&str])] = &[
    (
        "km",
        &[
            "km",
            "kms",
            "kilometer",
            "kilometers",
            "kilometre",
            "kilometres",
        ],
    ),
    ("mile", &["mile", "miles", "mi", "mph"]),
    ("m", &["meter", "meters", "metre", "metres"]),
    (
        "cm",
        &[
            "cm",
            "centimeter",
            "centimeters",
            "centimetre",
            "centimetres",
        ],
    ),
    ("mm", &["mm", "millimeter", "millimeters"]),
    ("ft", &["ft", "foot", "feet"]),
    ("in", &["inch", "inches"]),
    ("yd", &["yard", "yards"]),
    (
        "kg",
        &["kg", "kgs", "kilogram", "kilograms", "kilo", "kilos"],
    ),
    ("g", &["gram", "grams"]),
    ("lb", &["lb", "lbs", "pound", "pounds"]),
    ("oz", &["oz", "ounce", "ounces"]),
    ("l", &["liter", "liters", "litre", "litres"]),
    ("gal", &["gallon", "gallons"]),
    ("celsius", &["celsius", "centigrade"]),
    ("fahrenheit", &["fahrenheit"]),
    ("kelvin", &["kelvin"]),
    ("usd", &["usd", "dollar", "dollars", "$"]),
    ("eur", &["eur", "euro", "euros", "€"]),
    ("gbp", &["gbp", "£", "sterling"]),
    ("inr", &["inr", "rupee", "rupees", "rs"]),
    ("yen", &["yen", "jpy"]),
    ("byte", &["byte", "bytes"]),
    ("kb", &["kb", "kilobyte", "kilobytes"]),
    ("mb", &["mb", "megabyte", "megabytes"]),
    ("gb", &["gb", "gigabyte", "gigabytes"]),
    ("tb", &["tb", "terabyte", "terabytes"]),
    ("bit", &["bit", "bits"]),
    ("ms", &["ms", "millisecond", "milliseconds"]),
    ("sec", &["second", "seconds", "secs"]),
    ("min", &["minute", "minutes", "mins"]),
    ("hour", &["hour", "hours", "hr", "hrs"]),
    ("day", &["day", "days"]),
    ("week", &["week", "weeks"]),
    ("month", &["month", "months"]),
    ("year", &["year", "years", "yr", "yrs"]),
    ("percent", &["percent", "%", "percentage"]),
    ("watt", &["watt", "watts", "kw", "kwh"]),
    ("volt", &["volt", "volts"]),
];

const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("thirteen", "13"),
    ("fourteen", "14"),
    ("fifteen", "15"),
    ("sixteen", "16"),
    ("seventeen", "17"),
    ("eighteen", "18"),
    ("nineteen", "19"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("forty", "40"),
    ("fifty", "50"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("million", "1000000"),
    ("billion", "1000000000"),
    ("twice", "2"),
    ("half", "0.5"),
    ("dozen", "12"),
    ("second", "2"),
    ("third", "3"),
    ("fourth", "4"),
    ("fifth", "5"),
    ("tenth", "10"),
];

const MONTHS: &[&str] = &[
    "january",
    "february",
    "march",
    "april",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

const WH: &[&str] = &[
    "what", "why", "how", "when", "where", "who", "which", "whom", "whose",
];

/// Prepositions whose object changes the answer when it changes places.
const ROLES: &[&str] = &[
    "to", "into", "from", "than", "vs", "versus", "against", "over",
];

/// Splits into raw tokens: letter/digit runs, keeping `c++`, `c#`, `node.js`, `3.5`, `n't`.
fn raw_tokens(text: &str) -> Vec<(String, bool, bool)> {
    // (token, starts upper-case, follows a sentence end)
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut sentence_start = true;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() {
            let start = i;
            let mut tok = String::new();
            while i < chars.len() {
                let c = chars[i];
                let next = chars.get(i + 1).copied();
                if c.is_alphanumeric() || c == '_' {
                    tok.push(c);
                    i += 1;
                } else if (c == '.' || c == ',' || c == ':' || c == '/')
                    && next.is_some_and(|n| n.is_ascii_digit())
                    && tok.chars().last().is_some_and(|p| p.is_ascii_digit())
                {
                    // 3.5, 1,000, 10:30, 1/2
                    if c != ',' {
                        tok.push(c);
                    }
                    i += 1;
                } else if c == '.' && next.is_some_and(|n| n.is_alphabetic()) && tok == "node" {
                    tok.push(c);
                    i += 1;
                } else if (c == '\'' || c == '’') && next.is_some_and(|n| n.is_alphabetic()) {
                    tok.push('\'');
                    i += 1;
                } else if (c == '+' || c == '#') && tok.len() == 1 {
                    // c++, c#, f#
                    tok.push(c);
                    i += 1;
                    if c == '+' && chars.get(i) == Some(&'+') {
                        tok.push('+');
                        i += 1;
                    }
                    break;
                } else {
                    break;
                }
            }
            let upper = chars[start].is_uppercase();
            out.push((tok, upper, sentence_start));
            sentence_start = false;
        } else {
            if matches!(c, '.' | '?' | '!' | ':' | ';' | '\n' | '"' | '(' | '-') {
                sentence_start = true;
            }
            if matches!(c, '$' | '€' | '£' | '%') {
                out.push((c.to_string(), false, false));
            }
            i += 1;
        }
    }
    out
}

/// Strips plurals and possessives: cheap, only needs to be consistent across two texts.
pub(crate) fn lemma(word: &str) -> String {
    let w = word.strip_suffix("'s").unwrap_or(word);
    let n = w.chars().count();
    if n > 4 && w.ends_with("ies") {
        return format!("{}y", &w[..w.len() - 3]);
    }
    if n > 4
        && (w.ends_with("ches") || w.ends_with("shes") || w.ends_with("xes") || w.ends_with("sses"))
    {
        return w[..w.len() - 2].to_string();
    }
    if n > 3 && w.ends_with('s') && !w.ends_with("ss") && !w.ends_with("us") && !w.ends_with("is") {
        return w[..w.len() - 1].to_string();
    }
    w.to_string()
}

fn normalise_number(tok: &str) -> Option<String> {
    let t = tok.trim_end_matches(['.', ':', '/']);
    if t.is_empty() {
        return None;
    }
    if t.chars()
        .all(|c| c.is_ascii_digit() || c == '.' || c == ':' || c == '/')
        && t.chars().any(|c| c.is_ascii_digit())
    {
        // Leading zeros and trailing ".0" do not change a number.
        let t = match t.split_once('.') {
            Some((int, frac)) if frac.chars().all(|c| c == '0') => int,
            _ => t,
        };
        let trimmed = t.trim_start_matches('0');
        return Some(if trimmed.is_empty() || trimmed.starts_with('.') {
            format!("0{trimmed}")
        } else {
            trimmed.to_string()
        });
    }
    // 2nd, 3rd, 10th, 5k, 10x
    let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
    if !digits.is_empty() {
        let rest = &t[digits.len()..];
        if matches!(rest, "st" | "nd" | "rd" | "th" | "s") {
            return normalise_number(&digits);
        }
        // 5km, 10gb, 2x: keep the whole token, it is a quantity either way.
        return Some(t.to_string());
    }
    NUMBER_WORDS
        .iter()
        .find(|(w, _)| *w == t)
        .map(|(_, n)| (*n).to_string())
}

/// The word tables as hash lookups, built once: every word of both texts is checked against
/// all of them, and scanning the lists was most of a verification (48 µs for a pair of
/// 13-word questions, `cargo bench -p cache --bench verifier`).
struct Lexicon {
    stop: HashSet<&'static str>,
    negations: HashSet<&'static str>,
    months: HashSet<&'static str>,
    /// Form → canonical name; the first table entry naming a form wins, as in a scan.
    languages: HashMap<&'static str, &'static str>,
    units: HashMap<&'static str, &'static str>,
    /// Word → every (opposition group, side) it belongs to.
    directions: HashMap<&'static str, Vec<(usize, u8)>>,
}

fn lexicon() -> &'static Lexicon {
    static LEXICON: std::sync::LazyLock<Lexicon> = std::sync::LazyLock::new(|| {
        let names = |table: &'static [(&'static str, &'static [&'static str])]| {
            let mut map = HashMap::new();
            for (name, forms) in table {
                for form in *forms {
                    map.entry(*form).or_insert(*name);
                }
            }
            map
        };
        let mut directions: HashMap<&'static str, Vec<(usize, u8)>> = HashMap::new();
        for (g, (a, b)) in OPPOSITES.iter().enumerate() {
            for (side, words) in [(0u8, a), (1u8, b)] {
                for word in words.iter() {
                    let entry = directions.entry(word).or_default();
                    if !entry.contains(&(g, side)) {
                        entry.push((g, side));
                    }
                }
            }
        }
        Lexicon {
            stop: STOP.iter().copied().collect(),
            negations: NEGATIONS.iter().copied().collect(),
            months: MONTHS.iter().copied().collect(),
            languages: names(LANGUAGES),
            units: names(UNITS),
            directions,
        }
    });
    &LEXICON
}

fn lookup_unit(word: &str) -> Option<&'static str> {
    lexicon().units.get(word).copied()
}

/// Quantities glued to a unit ("5km", "10GB") split into both.
fn split_quantity(tok: &str) -> Option<(&str, &str)> {
    let end = tok.find(|c: char| !c.is_ascii_digit() && c != '.')?;
    if end == 0 || end == tok.len() {
        return None;
    }
    Some((&tok[..end], &tok[end..]))
}

impl Analysed {
    pub(crate) fn new(text: &str) -> Self {
        let raw = raw_tokens(text);
        let mut words = Vec::with_capacity(raw.len());
        let mut numbers = Vec::new();
        let mut negated = false;
        let mut negations = 0usize;
        let mut languages = HashSet::new();
        let mut units = HashSet::new();
        let mut directions = HashSet::new();
        let mut entities = HashSet::new();
        let mut names = Vec::new();
        let mut wh = None;
        for (tok, upper, sentence_start) in &raw {
            let lower = tok.to_lowercase();
            let lexicon = lexicon();
            if lower.ends_with("n't") || lexicon.negations.contains(lower.as_str()) {
                negated = true;
                negations += 1;
            }
            let mut is_number = false;
            if let Some((qty, unit)) = split_quantity(&lower) {
                if let Some(u) = lookup_unit(unit) {
                    units.insert(u);
                    if let Some(n) = normalise_number(qty) {
                        numbers.push(n);
                    }
                    is_number = true;
                }
            }
            if !is_number {
                // "one" and "second" are usually not numbers; count them only beside digits
                // would be better, but a mismatch on them is rare enough to keep it simple.
                let soft = matches!(lower.as_str(), "one" | "second" | "half");
                if let Some(n) = normalise_number(&lower) {
                    if !soft {
                        numbers.push(n);
                    }
                    is_number = lower.chars().next().is_some_and(|c| c.is_ascii_digit());
                }
            }
            if lexicon.months.contains(lower.as_str()) {
                numbers.push(lower.clone());
            }
            // "C" and "R" as languages only when written as a capital letter on their own.
            let lang = if lower == "c" && !tok.starts_with('C') {
                None
            } else if tok == "Go" && !*sentence_start {
                Some("go")
            } else {
                lexicon.languages.get(lower.as_str()).copied()
            };
            // "Python" the language vs "python" the snake cannot be told apart; both count.
            if let Some(l) = lang {
                languages.insert(l);
            }
            if let Some(u) = lookup_unit(&lower) {
                units.insert(u);
            }
            if let Some(groups) = lexicon.directions.get(lower.as_str()) {
                directions.extend(groups.iter().copied());
            }
            if wh.is_none() {
                wh = WH.iter().find(|w| **w == lower).copied();
            }
            let lem = lemma(&lower);
            let content = !is_number
                && !lexicon.stop.contains(lower.as_str())
                && !lexicon.negations.contains(lower.as_str())
                && !lower.ends_with("n't")
                && lower.chars().any(|c| c.is_alphabetic())
                && lower.chars().count() > 1;
            let capitalised = *upper && !*sentence_start && lower != "i";
            if capitalised && content && lang.is_none() && !lexicon.months.contains(lower.as_str()) {
                entities.insert(lem.clone());
                names.push(lem.clone());
            } else if content && lang.is_none() && is_camel_case(tok) {
                names.push(lem.clone());
            }
            words.push(Word {
                lower,
                lemma: lem,
                capitalised,
                content,
                language: lang,
            });
        }
        let content = words
            .iter()
            .filter(|w| w.content)
            .map(|w| w.lemma.clone())
            .collect();
        let mut roles = Vec::new();
        for (i, w) in words.iter().enumerate() {
            if let Some(role) = ROLES.iter().find(|r| **r == w.lower) {
                if let Some(next) = words[i + 1..]
                    .iter()
                    .take(3)
                    .find(|n| n.content || n.language.is_some())
                {
                    roles.push((*role, next.lemma.clone()));
                }
            }
        }
        numbers.sort();
        numbers.dedup();
        let mut coordinated = Vec::new();
        let mut second_part = false;
        for (i, w) in words.iter().enumerate() {
            if !matches!(w.lower.as_str(), "and" | "or") {
                continue;
            }
            let (Some(before), Some(after)) = (i.checked_sub(1).and_then(|j| words.get(j)), words.get(i + 1)) else {
                continue;
            };
            if WH.contains(&after.lower.as_str()) || (after.lower == "vice" && words.get(i + 2).is_some_and(|n| n.lower == "versa")) {
                second_part = true;
            } else if w.lower == "and" && before.content && after.content {
                coordinated.push((before.lemma.clone(), after.lemma.clone()));
            }
        }
        let parts = questions_asked(text).max(1 + usize::from(second_part));
        Self {
            words,
            numbers,
            negated,
            negations,
            content,
            languages,
            units,
            directions,
            entities,
            names,
            wh,
            roles,
            parts,
            coordinated,
        }
    }

    /// Whether this text asks something `other` does not: another question, a second part
    /// ("… and why", "… or vice versa"), or another item beside one they share ("writing and
    /// speaking skills" against "writing skills"). An answer to the shorter question leaves
    /// the extra part unanswered.
    pub(crate) fn asks_more_than(&self, other: &Analysed) -> bool {
        if self.parts > other.parts {
            return true;
        }
        // One item of "x and y" is the other's, the other item is nowhere in it — unless the
        // other coordinates the shared item with something else ("lonely and depressed" /
        // "lonely and sad": a reworded item, not an added one).
        let mentions = |word: &str| other.content.iter().any(|theirs| same_stem(word, theirs));
        let coordinates = |word: &str| other.coordinated.iter().any(|(x, y)| same_stem(word, x) || same_stem(word, y));
        self.coordinated.iter().any(|(x, y)| match (mentions(x), mentions(y)) {
            (true, false) => !coordinates(x),
            (false, true) => !coordinates(y),
            _ => false,
        })
    }

    /// All lemmas (content or not) as a set.
    pub(crate) fn lemma_set(&self) -> HashSet<&str> {
        self.words.iter().map(|w| w.lemma.as_str()).collect()
    }

    /// Content lemmas as a set.
    pub(crate) fn content_set(&self) -> HashSet<&str> {
        self.content.iter().map(String::as_str).collect()
    }
}

/// Question marks that end a question (after a word, spaces aside: not "….?"), at least 1.
fn questions_asked(text: &str) -> usize {
    let mut asked = 0;
    let mut after_word = false;
    for c in text.chars() {
        if c == '?' {
            asked += usize::from(after_word);
            after_word = false;
        } else if c.is_alphanumeric() {
            after_word = true;
        } else if !c.is_whitespace() {
            after_word = false;
        }
    }
    asked.max(1)
}

/// Same word up to a light suffix ("sleep" / "sleeping", "invest" / "investment"): a shared
/// stem of at least five letters, or equal words.
fn same_stem(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let shared = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    shared >= 5 || (shared >= 4 && shared == a.chars().count().min(b.chars().count()))
}

/// Entities of `a` that `b` does not mention at all (case-insensitively, any word).
pub(crate) fn unmatched_entities(a: &Analysed, b: &Analysed) -> usize {
    unmentioned(a.entities.iter().map(String::as_str), b)
}

/// How many of `names` (lower-case lemmas) `x` does not mention, case-insensitively, as any
/// word or inside its joined words ("Face book" / "Facebook").
fn unmentioned<'n>(names: impl Iterator<Item = &'n str>, x: &Analysed) -> usize {
    let lemmas = x.lemma_set();
    let joined: String = x.words.iter().map(|w| w.lower.as_str()).collect();
    names.filter(|n| !lemmas.contains(n) && !joined.contains(n)).count()
}

/// "iPhone", "eBay", "macOS": a lower-case start with a capital later is a name wherever it
/// stands, even first in a sentence, where capitals say nothing.
fn is_camel_case(token: &str) -> bool {
    let mut chars = token.chars();
    chars.next().is_some_and(char::is_lowercase) && chars.any(char::is_uppercase)
}

/// One question names something the other does not mention, and the other names something
/// else instead: a new name ("Canada" / "Australia", "Android" / "iPhone") or one it already
/// had, mentioned once more ("Linux instead of Windows" / "Linux instead of Linux").
fn names_swapped(a: &Analysed, b: &Analysed) -> bool {
    fn mentions(x: &Analysed) -> HashMap<&str, usize> {
        let mut count: HashMap<&str, usize> = HashMap::new();
        for name in &x.names {
            *count.entry(name.as_str()).or_default() += 1;
        }
        count
    }
    fn more(x: &HashMap<&str, usize>, y: &HashMap<&str, usize>) -> bool {
        x.iter().any(|(name, k)| y.get(name).is_some_and(|m| k > m))
    }
    let (ma, mb) = (mentions(a), mentions(b));
    let a_lacks = unmentioned(mb.keys().copied(), a) > 0;
    let b_lacks = unmentioned(ma.keys().copied(), b) > 0;
    (a_lacks && (b_lacks || more(&ma, &mb))) || (b_lacks && more(&mb, &ma))
}

/// Positions of content lemmas that occur exactly once in the text.
fn unique_positions(words: &[String]) -> HashMap<&str, usize> {
    let mut count: HashMap<&str, usize> = HashMap::new();
    for w in words {
        *count.entry(w.as_str()).or_default() += 1;
    }
    words
        .iter()
        .enumerate()
        .filter(|(_, w)| count.get(w.as_str()) == Some(&1))
        .map(|(i, w)| (w.as_str(), i))
        .collect()
}

/// Shared content lemmas (each once per text), as positions in `a` and in `b`, ordered by
/// their position in `a`.
pub(crate) fn shared_order(a: &Analysed, b: &Analysed) -> Vec<(usize, usize)> {
    let pa = unique_positions(&a.content);
    let pb = unique_positions(&b.content);
    let mut shared: Vec<(usize, usize)> = pa
        .iter()
        .filter_map(|(w, &i)| pb.get(w).map(|&j| (i, j)))
        .collect();
    shared.sort();
    shared
}

/// Kendall's tau of the shared content words' order; 1 when fewer than two are shared.
pub(crate) fn kendall_tau(order: &[(usize, usize)]) -> f32 {
    let n = order.len();
    if n < 2 {
        return 1.0;
    }
    let mut concordant = 0i64;
    let mut discordant = 0i64;
    for i in 0..n {
        for j in i + 1..n {
            if order[j].1 > order[i].1 {
                concordant += 1;
            } else {
                discordant += 1;
            }
        }
    }
    (concordant - discordant) as f32 / (concordant + discordant) as f32
}

/// A shared triple x … p … y in one text appearing as y … p … x in the other: the two ends
/// swapped around the same middle word ("Poles dislike Russians" / "Russians dislike Poles").
fn reversed_triple(order: &[(usize, usize)]) -> bool {
    let n = order.len();
    for i in 0..n {
        for j in i + 1..n {
            for k in j + 1..n {
                if order[i].1 > order[j].1 && order[j].1 > order[k].1 {
                    return true;
                }
            }
        }
    }
    false
}

/// The object of a role preposition moved to another shared word: "convert km to miles" vs
/// "convert miles to km", "is Rust faster than Go" vs "is Go faster than Rust".
fn role_swap(a: &Analysed, b: &Analysed) -> bool {
    let sa = a.content_set();
    let sb = b.content_set();
    let langs_a: HashSet<&str> = a.words.iter().map(|w| w.lemma.as_str()).collect();
    let langs_b: HashSet<&str> = b.words.iter().map(|w| w.lemma.as_str()).collect();
    let in_both = |w: &str| {
        (sa.contains(w) || langs_a.contains(w)) && (sb.contains(w) || langs_b.contains(w))
    };
    for (role, x) in &a.roles {
        if !in_both(x) {
            continue;
        }
        let b_objects: Vec<&String> = b
            .roles
            .iter()
            .filter(|(r, _)| r == role)
            .map(|(_, w)| w)
            .collect();
        if b_objects.is_empty() || b_objects.contains(&x) {
            continue;
        }
        if b_objects
            .iter()
            .any(|y| in_both(y) && a.roles.iter().all(|(r, w)| !(r == role && w == *y)))
        {
            return true;
        }
    }
    false
}

/// Cheap lexical guards: `Some(reason)` when the two texts must not share an answer.
///
/// Each guard is written to keep precision: it fires on differences that change what is
/// asked (numbers and dates, negation, opposite directions, named languages, units,
/// entities swapped for others, arguments swapped around the same relation, one question
/// asking more than the other: a second question or part, an added item), and accepts
/// that some paraphrases ("can't" vs "unable to" is fine, "2" vs "two" is fine, but passive
/// voice is not) are vetoed too.
pub fn lexical_veto(query: &str, cached: &str) -> Option<&'static str> {
    let a = Analysed::new(query);
    let b = Analysed::new(cached);
    veto_analysed(&a, &b)
}

pub(crate) fn veto_analysed(a: &Analysed, b: &Analysed) -> Option<&'static str> {
    if a.numbers != b.numbers {
        return Some("numbers or dates differ");
    }
    if a.negated != b.negated || a.negations != b.negations {
        return Some("negation differs");
    }
    for &(g, side) in &a.directions {
        if b.directions.contains(&(g, 1 - side)) && !b.directions.contains(&(g, side)) {
            return Some("opposite direction words");
        }
    }
    for &(g, side) in &b.directions {
        if a.directions.contains(&(g, 1 - side)) && !a.directions.contains(&(g, side)) {
            return Some("opposite direction words");
        }
    }
    // "against" one side only: "arguments for X" vs "arguments against X" is caught above,
    // "arguments against X" vs "arguments about X" here.
    let against = |x: &Analysed| x.directions.contains(&(5, 1));
    if against(a) != against(b) {
        return Some("for vs against");
    }
    if a.languages != b.languages {
        return Some("named language differs");
    }
    if a.units != b.units && !(a.units.is_empty() || b.units.is_empty()) {
        return Some("unit differs");
    }
    if names_swapped(a, b) {
        return Some("named entities differ");
    }
    let order = shared_order(a, b);
    if reversed_triple(&order) {
        return Some("main words in reversed order");
    }
    if role_swap(a, b) || role_swap(b, a) {
        return Some("arguments swapped");
    }
    // Skipped for the same words in other punctuation ("… books?" / "… books.").
    let same_words = a.words.iter().map(|w| &w.lower).eq(b.words.iter().map(|w| &w.lower));
    if !same_words && (a.asks_more_than(b) || b.asks_more_than(a)) {
        return Some("one asks more than the other");
    }
    None
}

#[cfg(test)]
#[allow(clippy::expect_used)]
mod tests {
    use super::*;

    fn vetoed(a: &str, b: &str) -> bool {
        lexical_veto(a, b).is_some()
    }

    #[test]
    fn answer_changing_edits_are_vetoed() {
        let cases = [
            (
                "Why do Poles dislike Russians?",
                "Why do Russians dislike Poles?",
            ),
            (
                "Sort this list in ascending order",
                "Sort this list in descending order",
            ),
            (
                "Translate 'good morning' into French",
                "Translate 'good morning' into German",
            ),
            ("What is 15% of 80?", "What is 15% of 90?"),
            ("What happened in 1998?", "What happened in 1999?"),
            (
                "Give arguments for nuclear power",
                "Give arguments against nuclear power",
            ),
            ("Why is the sky blue?", "Why isn't the sky blue?"),
            (
                "Write a function to reverse a string in Python",
                "Write a function to reverse a string in Rust",
            ),
            ("Convert 5 km to miles", "Convert 5 miles to km"),
            ("Is Rust faster than Go?", "Is Go faster than Rust?"),
            (
                "How many calories in an apple without the skin?",
                "How many calories in an apple?",
            ),
            (
                "How do I increase my credit score?",
                "How do I decrease my credit score?",
            ),
            (
                "What did Napoleon do before Waterloo?",
                "What did Napoleon do after Waterloo?",
            ),
            (
                "What is the capital of Canada?",
                "What is the capital of Australia?",
            ),
            (
                "Convert 100 degrees Celsius to Fahrenheit",
                "Convert 100 degrees Fahrenheit to Celsius",
            ),
        ];
        for (a, b) in cases {
            assert!(vetoed(a, b), "not vetoed: {a:?} / {b:?}");
            assert!(vetoed(b, a), "not vetoed (reversed): {b:?} / {a:?}");
        }
    }

    /// Names written in camel case ("iPhone") count wherever they stand, and a name swapped for
    /// one the question already mentions is still a swap; the same names reworded are not.
    #[test]
    fn camel_case_names_and_a_name_swapped_for_a_repeat_are_vetoed() {
        for (a, b) in [
            ("Is there a working Nintendo 3DS emulator for PC or Android?", "Is there a working Nintendo 3DS emulator for PC or iPhone?"),
            ("iPhone or Android: which has the better camera?", "eBay or Android: which has the better camera?"),
            ("Why do some programmers prefer Linux OS instead of Windows or Mac OSX?", "Why do some programmers prefer Linux OS instead of Linux or Mac OSX?"),
        ] {
            assert_eq!(lexical_veto(a, b), Some("named entities differ"), "{a:?} / {b:?}");
            assert_eq!(lexical_veto(b, a), Some("named entities differ"), "{b:?} / {a:?}");
        }
        for (a, b) in [
            ("How do I reset my iPhone?", "How can I reset an iPhone?"),
            ("iPhone: how do I take a screenshot?", "How do I take a screenshot on my iPhone?"),
            ("Why do programmers prefer Linux to Windows? Is Linux better?", "Is Linux better than Windows for programmers?"),
        ] {
            assert_ne!(lexical_veto(a, b), Some("named entities differ"), "{a:?} / {b:?}");
            assert_ne!(lexical_veto(b, a), Some("named entities differ"), "{b:?} / {a:?}");
        }
    }

    /// The cached answer to the shorter question leaves the extra part unanswered (hand-audited
    /// Quora hits marked borderline were mostly this); the same words in other punctuation and
    /// a reworded item of a pair are not "more".
    #[test]
    fn a_question_that_asks_more_is_vetoed() {
        for (a, b) in [
            ("How do I improve my English writing and speaking skills?", "How can I improve my English writing skills?"),
            ("How long do ants live?", "How long do ants live? Do all ants live equally long?"),
            ("Who is your role model?", "Who is your role model and why?"),
            ("Can a person change from introvert to extrovert?", "Can a person change from introvert to extrovert or vice versa?"),
        ] {
            assert_eq!(lexical_veto(a, b), Some("one asks more than the other"), "{a:?} / {b:?}");
            assert_eq!(lexical_veto(b, a), Some("one asks more than the other"), "{b:?} / {a:?}");
        }
        for (a, b) in [
            ("Can you recommend good books? P.S. I like Dan Brown books?", "Can you recommend good books? P.S. I like Dan Brown books."),
            ("How can I stop feeling lonely and depressed?", "How do I stop feeling lonely and sad?"),
            ("What is the difference between sleeping and meditation?", "What is the difference between meditation and sleep?"),
            ("What are the causes and effects of inflation?", "What are the reasons and consequences of inflation?"),
            ("Why do I get headaches? I saw many doctors.?", "Why do I get headaches? I saw many doctors."),
        ] {
            assert_eq!(lexical_veto(a, b), None, "{a:?} / {b:?}");
        }
    }

    #[test]
    fn paraphrases_pass() {
        let cases = [
            (
                "How do I sort a list in Python?",
                "In Python, how can I sort a list?",
            ),
            (
                "What is the capital of France?",
                "what's the capital city of france",
            ),
            (
                "Can you explain how photosynthesis works?",
                "Please explain how photosynthesis works.",
            ),
            (
                "Give me two examples of mammals",
                "Give me 2 examples of mammals",
            ),
            (
                "How can I improve my English?",
                "What are some ways to improve my English?",
            ),
            ("Why is the sky blue?", "why is the sky blue"),
        ];
        for (a, b) in cases {
            assert_eq!(lexical_veto(a, b), None, "{a:?} / {b:?}");
        }
    }

    #[test]
    fn tokens_keep_languages_and_numbers_whole() {
        let a = Analysed::new("Port this C++ code to C# and 3.50 dollars in node.js");
        assert!(a.languages.contains("c++"));
        assert!(a.languages.contains("c#"));
        assert!(a.languages.contains("javascript"));
        assert_eq!(a.numbers, vec!["3.50".to_string()]);
        assert!(a.units.contains("usd"));
    }

    #[test]
    fn kendall_tau_sees_reversal() {
        let a = Analysed::new("Why do Poles dislike Russians?");
        let b = Analysed::new("Why do Russians dislike Poles?");
        let order = shared_order(&a, &b);
        assert_eq!(order.len(), 3);
        assert_eq!(kendall_tau(&order), -1.0);
        assert_eq!(kendall_tau(&shared_order(&a, &a)), 1.0);
    }

    #[test]
    fn lemma_strips_plurals_consistently() {
        assert_eq!(lemma("cities"), "city");
        assert_eq!(lemma("boxes"), "box");
        assert_eq!(lemma("dogs"), "dog");
        assert_eq!(lemma("class"), "class");
        assert_eq!(lemma("python's"), "python");
    }
}
