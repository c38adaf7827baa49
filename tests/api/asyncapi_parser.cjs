// Validates an AsyncAPI document with the official parser (@asyncapi/parser: the JSON
// Schema of the spec plus its Spectral rules). Errors and warnings fail; infos and hints
// are printed. Usage: NODE_PATH=.../node_modules node asyncapi_parser.cjs FILE
"use strict";
const fs = require("fs");
const { Parser } = require("@asyncapi/parser");

(async () => {
  const text = fs.readFileSync(process.argv[2], "utf8");
  const diagnostics = await new Parser().validate(text);
  const names = ["error", "warning", "info", "hint"];
  let bad = 0;
  for (const d of diagnostics) {
    if (d.severity <= 1) bad++;
    console.log(`asyncapi-parser: ${names[d.severity]} ${d.code} at /${d.path.join("/")}: ${d.message}`);
  }
  console.log(`asyncapi-parser: ${bad} error(s) or warning(s)`);
  process.exit(bad ? 1 : 0);
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
