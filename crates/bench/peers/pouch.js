// The PouchDB side of `fieldsync-bench --peers` (issue #20, part b). Three commands:
//
//   node pouch.js load URL REGION        rows as JSON lines on stdin -> documents in the
//                                        remote database URL (created), plus the design
//                                        document `_design/bench` whose filter `slice`
//                                        keeps the documents of a region; not timed
//   node pouch.js pull URL DIR REGION    replicates URL into a new local PouchDB at DIR
//                                        (LevelDB, PouchDB's Node default) through the
//                                        design-document filter; the timed part
//   node pouch.js check DIR              the local database's figures, to check it
//
// Each prints one JSON object on stdout. The filter is a design-document filter, not a
// Mango selector: selector replication crashes pouchdb-server 4.2.0.
'use strict';
const PouchDB = require('pouchdb');
const readline = require('readline');

const LOAD_BATCH = 5000;
// Documents per replication batch (PouchDB's default is 100; more is faster here).
const PULL_BATCH = 1000;

async function load(url, region) {
  const db = new PouchDB(url);
  await db.put({
    _id: '_design/bench',
    filters: {
      slice: 'function (doc, req) { return doc.region === req.query.region; }',
    },
  });
  let batch = [];
  let loaded = 0;
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of lines) {
    if (!line) continue;
    const row = JSON.parse(line);
    row._id = String(row.id);
    batch.push(row);
    if (batch.length >= LOAD_BATCH) {
      loaded += await bulk(db, batch);
      batch = [];
    }
  }
  if (batch.length) loaded += await bulk(db, batch);
  const info = await db.info();
  console.log(JSON.stringify({ loaded, doc_count: info.doc_count, region }));
}

async function bulk(db, docs) {
  const res = await db.bulkDocs(docs);
  const failed = res.filter((r) => r.error);
  if (failed.length) throw new Error(`bulkDocs: ${failed.length} failed, first ${JSON.stringify(failed[0])}`);
  return docs.length;
}

async function pull(url, dir, region) {
  const started = process.hrtime.bigint();
  const local = new PouchDB(dir);
  const result = await PouchDB.replicate(new PouchDB(url), local, {
    filter: 'bench/slice',
    query_params: { region },
    batch_size: PULL_BATCH,
  });
  await local.close();
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  if (!result.ok) throw new Error(`replication failed: ${JSON.stringify(result.errors)}`);
  console.log(JSON.stringify({
    ms,
    docs_read: result.docs_read,
    docs_written: result.docs_written,
    adapter: 'leveldb',
    batch_size: PULL_BATCH,
  }));
}

async function check(dir) {
  const local = new PouchDB(dir);
  const all = await local.allDocs({ include_docs: true });
  let count = 0;
  let idSum = 0;
  let notesLen = 0;
  for (const r of all.rows) {
    if (r.id.startsWith('_design/')) continue;
    count += 1;
    idSum += r.doc.id;
    notesLen += r.doc.notes == null ? 0 : [...r.doc.notes].length;
  }
  await local.close();
  console.log(JSON.stringify({ count, id_sum: idSum, notes_len: notesLen }));
}

async function main() {
  const [cmd, ...args] = process.argv.slice(2);
  if (cmd === 'load' && args.length === 2) return load(args[0], args[1]);
  if (cmd === 'pull' && args.length === 3) return pull(args[0], args[1], args[2]);
  if (cmd === 'check' && args.length === 1) return check(args[0]);
  throw new Error('usage: node pouch.js load URL REGION | pull URL DIR REGION | check DIR');
}

main().catch((e) => {
  console.error(`pouch.js: ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
