#!/usr/bin/env node
// A third DKIM verifier, independent of dkimpy and Mail::DKIM: the npm package mailauth
// (Node.js's own crypto; it verifies Ed25519, which Debian's Mail::DKIM cannot).
// scripts/install-test-deps.sh installs it under $TXRELAY_VENV/node.
//
// Usage: NODE_PATH=$TXRELAY_VENV/node/node_modules node mailauth_verify.js KEYS FILE...
//   KEYS: lines "selector._domainkey.domain<TAB>TXT record", answered instead of DNS.
//   FILE: one message each, as the next hop received it.
// Prints one line per file: "FILE<TAB>domain=result (algorithm, selector, comment); ..."
// for each signature, or "FILE<TAB>none" when it has none.
'use strict';

const fs = require('node:fs');
const { dkimVerify } = require('mailauth/lib/dkim/verify');

async function main() {
    const [keysFile, ...messages] = process.argv.slice(2);
    if (!keysFile) {
        throw new Error('usage: mailauth_verify.js KEYS FILE...');
    }
    const records = new Map();
    for (const line of fs.readFileSync(keysFile, 'utf8').split('\n')) {
        const tab = line.indexOf('\t');
        if (tab > 0) {
            records.set(line.slice(0, tab).toLowerCase(), line.slice(tab + 1));
        }
    }
    // The tests' keys are in PostgreSQL, not in DNS: answer TXT queries from KEYS, in the
    // shape node:dns's resolveTxt gives (a record is a list of character-strings).
    const resolver = async (name, type) => {
        const value = records.get(String(name).replace(/\.$/, '').toLowerCase());
        if (type !== 'TXT' || value === undefined) {
            const error = new Error(`no ${type} record at ${name}`);
            error.code = 'ENOTFOUND';
            throw error;
        }
        const strings = value.match(/.{1,255}/gs);
        return [strings];
    };
    for (const file of messages) {
        const result = await dkimVerify(fs.readFileSync(file), { resolver });
        const parts = result.results.map(r => {
            const status = r.status || {};
            const detail = [r.algo, r.selector, status.comment].filter(Boolean).join(', ');
            return `${r.signingDomain}=${status.result} (${detail})`;
        });
        process.stdout.write(`${file}\t${parts.length ? parts.join('; ') : 'none'}\n`);
    }
}

main().catch(error => {
    process.stderr.write(`${error.stack || error}\n`);
    process.exit(1);
});
