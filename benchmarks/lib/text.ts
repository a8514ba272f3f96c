/**
 * Deterministic, realistic-looking text for the tokenizer benchmark: English prose with numbers,
 * names and the odd novel word, source code (TypeScript, Python, shell) with fresh identifiers,
 * Markdown lists and tables, and multilingual paragraphs (Chinese, Japanese, Russian, German,
 * French, emoji). Every call draws new content from the PRNG, so two texts share common words
 * (as real traffic does) but never whole passages.
 */

const COMMON = (
  "the of and to in is that it for on with as was be by this are or at from have an not which but " +
  "all they you we can more has one will their there been would if about when what some other into " +
  "time only new also two may these first any like over such after most where through should how then " +
  "because each used between well those before must while both under system data model request cache " +
  "server latency throughput memory worker token prompt response value result user service network queue " +
  "update change version release support config option error failure retry timeout limit budget cluster " +
  "node process thread core batch stream event message record index block prefix table query schema field " +
  "route policy load balance metric report test build deploy rollout traffic region replica shard storage " +
  "disk page write read file path buffer payload header client session account customer order invoice " +
  "price cost team project issue plan review design document meeting week month year today morning evening " +
  "quickly carefully usually probably really simply exactly roughly almost already still again never always " +
  "good large small long short high low fast slow early late simple complex clear open close full empty " +
  "make take give find keep show try need use know think look want work call start stop run send receive"
).split(" ");

const NAMES = ["Alice", "Bob", "Chen", "Dmitri", "Elena", "Fatima", "Gustavo", "Hiroshi", "Ingrid", "Jamal", "Kavya", "Lars", "Mei", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Sven", "Tariq"];
const PLACES = ["Berlin", "Tokyo", "São Paulo", "Nairobi", "Montréal", "Zürich", "Seoul", "Bengaluru", "Kraków", "Reykjavík", "Auckland", "Lisbon"];
const SYLLABLES = ["ka", "ro", "vin", "tel", "mu", "sha", "dor", "qui", "plex", "zan", "bri", "lo", "nex", "ter", "gal", "fu", "xi", "ron", "ve", "tha", "mor", "pi", "sel", "dra"];
const CJK =
  "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处理";
const KANA = "あいうえおかきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわをんアイウエオカキクケコサシスセソタチツテトナニヌネノ";
const RUSSIAN = "система запрос память время данные сервер ответ очередь ошибка модель токен кэш узел поток задержка нагрузка".split(" ");
const EUROPEAN = "Größe Straße über für Änderung Wärme naïve café déjà résumé façade coöperate señor añejo crème brûlée Ångström smörgåsbord".split(" ");
const EMOJI = ["🙂", "🚀", "✅", "❌", "🔥", "📈", "🤖", "⚠️", "👍🏽", "🇯🇵", "🧪", "💡"];
const TS_KEYWORDS = ["const", "let", "return", "await", "async", "function", "if", "else", "for", "throw", "new", "export", "import", "interface", "type"];

export class TextGen {
  constructor(private readonly rand: () => number) {}

  private int(n: number): number {
    return Math.floor(this.rand() * n);
  }
  private pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)]!;
  }
  private chance(p: number): boolean {
    return this.rand() < p;
  }

  /** A word no vocabulary list holds (a made-up name, product or term). */
  novel(): string {
    let w = "";
    const n = 2 + this.int(3);
    for (let i = 0; i < n; i++) w += this.pick(SYLLABLES);
    return w;
  }

  identifier(): string {
    const parts = [this.chance(0.3) ? this.novel() : this.pick(COMMON), this.pick(COMMON), ...(this.chance(0.5) ? [this.pick(COMMON)] : [])];
    if (this.chance(0.5)) return parts.map((p, i) => (i ? p[0]!.toUpperCase() + p.slice(1) : p)).join("");
    return parts.join("_");
  }

  private number(): string {
    switch (this.int(6)) {
      case 0:
        return String(this.int(100));
      case 1:
        return (this.rand() * 1000).toFixed(2);
      case 2:
        return this.int(10_000_000).toLocaleString("en");
      case 3:
        return `${this.int(100)}%`;
      case 4:
        return `20${10 + this.int(20)}-${String(1 + this.int(12)).padStart(2, "0")}-${String(1 + this.int(28)).padStart(2, "0")}`;
      default:
        return `0x${this.int(0xffffff).toString(16)}`;
    }
  }

  sentence(): string {
    const n = 6 + this.int(18);
    const words: string[] = [];
    for (let i = 0; i < n; i++) {
      const r = this.rand();
      words.push(
        r < 0.8 ? this.pick(COMMON) : r < 0.86 ? this.number() : r < 0.9 ? this.pick(NAMES) : r < 0.92 ? this.pick(PLACES) : r < 0.96 ? this.novel() : `\`${this.identifier()}\``,
      );
      if (this.chance(0.06)) words[words.length - 1] += ",";
    }
    const s = words.join(" ");
    return s[0]!.toUpperCase() + s.slice(1) + this.pick([".", ".", ".", "?", "!", ":", "…"]);
  }

  prose(): string {
    const n = 2 + this.int(5);
    const out: string[] = [];
    for (let i = 0; i < n; i++) out.push(this.sentence());
    let p = out.join(" ");
    if (this.chance(0.15)) p += ` ${this.pick(EMOJI)}`;
    if (this.chance(0.1)) p = `"${p}" — ${this.pick(NAMES)} (${this.pick(PLACES)})`;
    return p;
  }

  code(): string {
    if (this.chance(0.35)) return this.python();
    if (this.chance(0.15)) return this.shell();
    const name = this.identifier();
    const args = Array.from({ length: 1 + this.int(3) }, () => this.identifier());
    const lines = [`export async function ${name}(${args.map((a) => `${a}: ${this.pick(["string", "number", "Uint32Array", "Record<string, unknown>"])}`).join(", ")}) {`];
    const body = 2 + this.int(6);
    for (let i = 0; i < body; i++) {
      const v = this.identifier();
      switch (this.int(5)) {
        case 0:
          lines.push(`  const ${v} = await ${this.pick(args)}.${this.identifier()}(${this.number()}, "${this.pick(COMMON)} ${this.pick(COMMON)}");`);
          break;
        case 1:
          lines.push(`  if (${this.pick(args)} > ${this.number()} && !${v}) {`, `    throw new Error(\`${this.sentence()} \${${this.pick(args)}}\`);`, "  }");
          break;
        case 2:
          lines.push(`  for (let i = 0; i < ${v}.length; i++) ${this.identifier()}[i] = (${v}[i]! * ${this.int(64)}) >>> ${this.int(8)};`);
          break;
        case 3:
          lines.push(`  // ${this.sentence()}`);
          break;
        default:
          lines.push(`  ${this.pick(TS_KEYWORDS)} ${v} = { ${this.identifier()}: ${this.number()}, ${this.identifier()}: [${this.int(9)}, ${this.int(99)}] };`);
      }
    }
    lines.push(`  return ${this.pick(args)};`, "}");
    return "```ts\n" + lines.join("\n") + "\n```";
  }

  private python(): string {
    const name = this.identifier().replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);
    const arg = this.pick(COMMON);
    const lines = [`def ${name}(${arg}, *, ${this.pick(COMMON)}_limit=${this.int(1000)}):`, `    """${this.sentence()}"""`];
    const body = 2 + this.int(5);
    for (let i = 0; i < body; i++) {
      const v = this.identifier().toLowerCase();
      switch (this.int(4)) {
        case 0:
          lines.push(`    ${v} = [x ** 2 for x in ${arg} if x % ${2 + this.int(7)} == 0]`);
          break;
        case 1:
          lines.push(`    if not ${v}:`, `        raise ValueError(f"${this.pick(COMMON)} {${arg}!r} ${this.pick(COMMON)}")`);
          break;
        case 2:
          lines.push(`    # ${this.sentence()}`);
          break;
        default:
          lines.push(`    ${v} = {"${this.pick(COMMON)}": ${this.number()}, "${this.novel()}": None}`);
      }
    }
    lines.push(`    return ${arg}`);
    return "```python\n" + lines.join("\n") + "\n```";
  }

  private shell(): string {
    const lines = [
      `$ curl -s http://localhost:${8000 + this.int(100)}/v1/${this.pick(["models", "completions", "chat/completions"])} | jq '.${this.pick(COMMON)}'`,
      `$ kubectl -n ${this.novel()} logs deploy/${this.identifier().toLowerCase()} --since=${this.int(60)}m | grep -c ERROR`,
      `${this.int(5000)}`,
      `$ export ${this.pick(COMMON).toUpperCase()}_${this.pick(COMMON).toUpperCase()}=${this.number()}`,
    ];
    return "```bash\n" + lines.join("\n") + "\n```";
  }

  markdown(): string {
    if (this.chance(0.5)) {
      const n = 3 + this.int(5);
      const items = Array.from({ length: n }, (_, i) => `${this.chance(0.5) ? `${i + 1}.` : "-"} **${this.pick(COMMON)} ${this.pick(COMMON)}**: ${this.sentence()}`);
      return `## ${this.sentence().replace(/[.?!:…]$/, "")}\n\n${items.join("\n")}`;
    }
    const cols = 3 + this.int(3);
    const header = Array.from({ length: cols }, () => this.pick(COMMON));
    const rows = Array.from({ length: 2 + this.int(5) }, () => `| ${Array.from({ length: cols }, () => (this.chance(0.6) ? this.number() : this.pick(COMMON))).join(" | ")} |`);
    return [`| ${header.join(" | ")} |`, `|${" --- |".repeat(cols)}`, ...rows].join("\n");
  }

  multilingual(): string {
    switch (this.int(5)) {
      case 0: {
        let s = "";
        const n = 20 + this.int(60);
        for (let i = 0; i < n; i++) s += CJK[this.int(CJK.length)]! + (this.chance(0.08) ? "，" : "");
        return `${s}。${this.chance(0.3) ? this.pick(COMMON) + " " + this.number() : ""}`;
      }
      case 1: {
        let s = "";
        const n = 15 + this.int(40);
        for (let i = 0; i < n; i++) s += KANA[this.int(KANA.length)]!;
        return `${s}、${this.pick(COMMON)}の${CJK[this.int(CJK.length)]}です。`;
      }
      case 2:
        return `${Array.from({ length: 8 + this.int(12) }, () => this.pick(RUSSIAN)).join(" ")}.`;
      case 3:
        return `${this.pick(NAMES)} schrieb: ${Array.from({ length: 6 + this.int(10) }, () => (this.chance(0.4) ? this.pick(EUROPEAN) : this.pick(COMMON))).join(" ")}.`;
      default:
        return `${this.sentence()} ${Array.from({ length: 1 + this.int(4) }, () => this.pick(EMOJI)).join("")}`;
    }
  }

  paragraph(): string {
    const r = this.rand();
    return r < 0.55 ? this.prose() : r < 0.8 ? this.code() : r < 0.9 ? this.markdown() : this.multilingual();
  }

  /** Paragraphs until the text has at least `chars` characters. */
  text(chars: number): string {
    const parts: string[] = [];
    let len = 0;
    while (len < chars) {
      const p = this.paragraph();
      parts.push(p);
      len += p.length + 2;
    }
    return parts.join("\n\n");
  }
}
