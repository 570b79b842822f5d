// Drives FLORA's official TypeScript SDK (@flora-ai/flora) against the local emulator.
// Run by tests/emulator/test_emulator_sdk.py with FLORA_BASE_URL and FLORA_API_KEY set;
// prints one JSON object describing what the SDK saw, for the pytest to assert on.
import FLORA from '@flora-ai/flora';

const baseURL = process.env.FLORA_BASE_URL;
const apiKey = process.env.FLORA_API_KEY;
const client = new FLORA({ apiKey, baseURL, maxRetries: 0, timeout: 10_000 });
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function caught(promise) {
  try {
    await promise;
    return { thrown: false };
  } catch (err) {
    return {
      thrown: true,
      name: err.constructor.name,
      isAPIError: err instanceof FLORA.APIError,
      status: err.status,
      code: err.error?.error?.code,
      fields: err.error?.error?.fields?.map((f) => f.field),
      requestId: err.headers?.get('request-id'),
    };
  }
}

const out = {};

const technique = await client.techniques.retrieve('cctv-cam');
out.technique = {
  technique_id: technique.technique_id,
  run_cost: technique.run_cost,
  inputs: technique.inputs.map((i) => i.id),
};

const listed = [];
for await (const t of client.techniques.list({ limit: 10 })) listed.push(t.technique_id);
out.listedTechniques = listed.length;

const created = await client.techniques.runs.create('cctv-cam', {
  inputs: [{ id: 'face', type: 'imageUrl', value: 'https://media.flora.ai/sdk/face.png' }],
  mode: 'async',
  idempotency_key: 'sdk-check-1',
});
out.created = { run_id: created.run_id, status: created.status, poll_url: created.poll_url };

let run = created;
for (let i = 0; i < 400 && run.status !== 'completed' && run.status !== 'failed'; i++) {
  await sleep(10);
  run = await client.techniques.runs.retrieve(created.run_id, { techniqueId: 'cctv-cam' });
}
out.run = { status: run.status, progress: run.progress, outputs: (run.outputs ?? []).map((o) => o.type) };

const generic = await client.generations.retrieve(created.run_id);
out.genericStatus = generic.status;

const history = [];
for await (const r of client.techniques.runs.list({ technique_id: 'tech_cctv-cam' })) {
  history.push({ id: r.technique_run_id, technique: r.technique.technique_id });
}
out.history = history;

const badKey = new FLORA({ apiKey: 'sk_live_not_this_one', baseURL, maxRetries: 0 });
out.errors = {
  badKey: await caught(badKey.techniques.retrieve('cctv-cam')),
  badInput: await caught(
    client.techniques.runs.create('cctv-cam', {
      inputs: [{ id: 'face', type: 'imageUrl', value: 'http://example.com/face.png' }],
      mode: 'async',
    }),
  ),
  unknownSlug: await caught(client.techniques.retrieve('no-such-technique')),
};

console.log(JSON.stringify(out));
