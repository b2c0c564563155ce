// The audit page's review: a choice per file (relabel, exclude, keep), kept in the browser's
// local storage so a reload loses nothing, written as corrections.csv for
// `simpsons manifest --corrections`. No server, no network: the file is made here.
(() => {
  const data = JSON.parse(document.getElementById("review-data").textContent);
  const items = [...document.querySelectorAll("figure.review")];
  const KEYS = { a: "accept", x: "exclude", k: "keep", u: "undo" };
  const choices = new Map(data.earlier.map((choice) => [choice.path, choice]));  // what the manifest already holds
  for (const [path, choice] of Object.entries(stored())) choices.set(path, choice);  // then this browser's choices

  function stored() {
    try {
      return JSON.parse(localStorage.getItem(data.key) || "{}");
    } catch {
      return {};  // storage off (a private window): the choices last as long as the page
    }
  }

  function save() {
    try {
      localStorage.setItem(data.key, JSON.stringify(Object.fromEntries(choices)));
    } catch {
      // as above
    }
  }

  const TITLES = { accept: "file it under the suggested class (a)", exclude: "leave it out of every split (x)",
                   keep: "the label is right: nothing changes, the review is recorded (k)" };

  function button(text, action, disabled = false) {
    const b = document.createElement("button");
    Object.assign(b, { type: "button", textContent: text, disabled, title: TITLES[action] });
    b.dataset.action = action;
    return b;
  }

  function controls(figure) {
    const [label] = data.facts[figure.dataset.path] || [];
    const suggested = figure.dataset.suggested;
    const box = document.createElement("div");
    box.className = "controls";
    const pick = document.createElement("select");
    pick.className = "relabel";
    pick.append(new Option("relabel as...", ""), ...data.classes.filter((c) => c !== label).map((c) => new Option(c, c)));
    const shown = document.createElement("span");
    shown.className = "choice";
    box.append(shown, button(suggested ? `accept: ${suggested}` : "no suggestion", "accept", !suggested),
               button("exclude", "exclude"), button("keep", "keep"), pick);
    figure.append(box);
  }

  function decide(figure, action, label = "") {
    const path = figure.dataset.path;
    const section = figure.closest("section").querySelector("h2").textContent;
    choices.set(path, { path, action, label: action === "relabel" ? label : "", note: action ? `audit: ${section}` : "",
                        hash: (data.facts[path] || [])[1] || "" });
    save();
    show();
  }

  function act(figure, what) {
    if (what === "accept" && figure.dataset.suggested) decide(figure, "relabel", figure.dataset.suggested);
    else if (what === "exclude" || what === "keep") decide(figure, what);
    else if (what === "undo") decide(figure, "");
  }

  function show() {
    const counts = { relabel: 0, exclude: 0, keep: 0 };
    for (const choice of choices.values()) if (choice.action) counts[choice.action] += 1;
    for (const figure of items) {
      const choice = choices.get(figure.dataset.path) || { action: "" };
      figure.dataset.choice = choice.action;
      figure.querySelector(".choice").textContent =
        { relabel: `-> ${choice.label}`, exclude: "excluded", keep: "kept", "": "" }[choice.action];
      figure.querySelector("select.relabel").value = choice.action === "relabel" ? choice.label : "";
    }
    const total = counts.relabel + counts.exclude + counts.keep;
    document.getElementById("review-count").textContent = total
      ? `${total} decision(s): ${counts.relabel} relabel, ${counts.exclude} exclude, ${counts.keep} keep` : "no decisions yet";
    document.getElementById("download").disabled = !total;
  }

  function cell(value) {
    let text = String(value ?? "");
    if (data.formula.some((start) => text.startsWith(start))) text = `'${text}`;  // as label_issues.csv: never a formula
    return /[",\r\n]/.test(text) ? `"${text.replaceAll('"', '""')}"` : text;
  }

  function csv() {
    const rows = [...choices.values()].filter((choice) => choice.action)
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    return [data.columns, ...rows.map((choice) => data.columns.map((column) => choice[column]))]
      .map((row) => row.map(cell).join(",")).join("\r\n") + "\r\n";
  }

  function download() {
    const url = URL.createObjectURL(new Blob([csv()], { type: "text/csv" }));
    const link = Object.assign(document.createElement("a"), { href: url, download: "corrections.csv" });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  function move(step) {
    const at = items.indexOf(document.activeElement?.closest("figure.review"));
    const next = items[at < 0 ? 0 : Math.min(items.length - 1, Math.max(0, at + step))];
    next?.focus();
    next?.scrollIntoView({ block: "nearest" });
  }

  items.forEach(controls);
  document.addEventListener("click", (event) => {
    const target = event.target.closest("figure.review button[data-action]");
    if (target) act(target.closest("figure"), target.dataset.action);
  });
  document.addEventListener("change", (event) => {
    if (event.target.matches("figure.review select.relabel")) {
      const figure = event.target.closest("figure");
      decide(figure, event.target.value ? "relabel" : "", event.target.value);
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.target.closest?.("select, input, textarea")) return;
    const key = event.key.toLowerCase();
    const current = document.activeElement?.closest("figure.review");
    if (key === "n" || key === "p") move(key === "n" ? 1 : -1);
    else if (current && KEYS[key]) act(current, KEYS[key]);
    else return;
    event.preventDefault();
  });
  document.getElementById("download").addEventListener("click", download);
  show();
})();
