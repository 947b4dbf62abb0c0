#!/usr/bin/env node
/*
 * Drives the official Apache RocketMQ 5 Node.js client (npm rocketmq-client-nodejs) for tests.
 *
 *   node tests/official_clients/node/client.js ACTION 'JSON-ARGUMENTS'
 *
 * Same interface as tests/official_clients/python_client.py: JSON-ARGUMENTS is a JSON object, `-` to
 * read it from standard input, or `@path` to read it from a file. Standard output carries only events,
 * one JSON object per line; the client's own log goes to $HOME/logs/rocketmq/. Exit status: 0 the
 * action completed, 1 it failed (the last line is an `error` event), 2 bad arguments, 3 the watchdog
 * (`timeout_s`) fired. tests/official_clients/README.md documents the actions and events.
 */
'use strict';

const crypto = require('node:crypto');
const fs = require('node:fs');

// Events own the real standard output; anything else written there goes to standard error.
const writeEvent = process.stdout.write.bind(process.stdout);
process.stdout.write = process.stderr.write.bind(process.stderr);
// egg-logger (the client's logger) would copy its lines to the console when EGG_LOG is set.
delete process.env.EGG_LOG;

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_WATCHDOG = 3;

const COMMON_KEYS = [ 'endpoint', 'namespace', 'access_key', 'secret_key', 'request_timeout_s', 'tls', 'timeout_s' ];
const ACTION_KEYS = {
  produce: [ 'topic', 'messages', 'allow_failures', 'graceful_shutdown' ],
  'produce-transaction': [ 'topic', 'messages', 'decision', 'check_answer', 'duration_s', 'allow_failures',
    'graceful_shutdown' ],
  recall: [ 'topic', 'recall_handle' ],
  'simple-consume': [ 'group', 'topic', 'filter', 'invisible_duration_s', 'await_duration_s', 'max_messages',
    'duration_s', 'action', 'ack_from_attempt', 'change_invisible_s', 'stop_after_received', 'stop_after_acks',
    'max_consecutive_errors', 'emit_body', 'graceful_shutdown' ],
  'push-consume': [ 'group', 'topic', 'filter', 'behaviour', 'fail_first_n', 'fail_with', 'consume_delay_ms',
    'duration_s', 'stop_after_successes', 'linger_s', 'threads', 'emit_body', 'graceful_shutdown' ],
};
const MESSAGE_KEYS = [ 'body', 'body_base64', 'body_size', 'tag', 'keys', 'properties', 'message_group',
  'delivery_timestamp_ms', 'decision' ];
const SIMPLE_ACTIONS = { ack: 1, none: null, 'ack-on-retry': 2, 'change-invisible': 2 };

class UsageError extends Error {}
class ActionFailed extends Error {}

function emit(event, fields = {}) {
  writeEvent(JSON.stringify({ event, ...fields }) + '\n');
}

let finishing = false;
function finish(code) {
  if (finishing) return;
  finishing = true;
  // Writes to pipes and files are synchronous on Linux; the callback covers the other cases.
  writeEvent('', () => process.exit(code));
  setTimeout(() => process.exit(code), 1000).unref();
}

function oneLine(text) {
  return String(text).split(/\s+/).filter(Boolean).join(' ');
}

function errorFields(err) {
  if (!(err instanceof Error)) {
    return { error: oneLine(String(err)), error_type: typeof err };
  }
  const fields = { error: oneLine(err.message) || err.name, error_type: err.constructor?.name || err.name };
  if (typeof err.code === 'number' || typeof err.code === 'string') {
    fields.code = err.code;
  }
  // The client wraps errors (startup: "Failed to fetch topic routes" <- the gRPC error): keep the chain.
  const causes = [];
  for (let cause = err.cause; cause && causes.length < 5; cause = cause instanceof Error ? cause.cause : null) {
    causes.push(cause instanceof Error ? `${cause.constructor?.name || 'Error'}: ${oneLine(cause.message)}` :
      oneLine(String(cause)));
  }
  if (causes.length) fields.cause = causes.join(' <- ');
  return fields;
}

/** Typed access to the JSON arguments of one action. */
class Args {
  constructor(values, where = 'arguments') {
    this.values = values;
    this.where = where;
  }

  #get(key, type, fallback) {
    const value = this.values[key];
    if (value === undefined || value === null) return fallback;
    const ok = type === 'integer' ? Number.isInteger(value) :
      type === 'array' ? Array.isArray(value) :
        type === 'object' ? typeof value === 'object' && !Array.isArray(value) :
          typeof value === type;
    if (!ok) throw new UsageError(`${this.where}: ${key} must be ${type}`);
    return value;
  }

  requiredStr(key) {
    const value = this.#get(key, 'string', '');
    if (!value) throw new UsageError(`${this.where}: ${key} is required`);
    return value;
  }

  str(key, fallback = null) { return this.#get(key, 'string', fallback); }
  num(key, fallback = null) { return this.#get(key, 'number', fallback); }
  int(key, fallback = null) { return this.#get(key, 'integer', fallback); }
  bool(key, fallback) { return this.#get(key, 'boolean', fallback); }
  obj(key) { return this.#get(key, 'object', {}); }
  list(key) { return this.#get(key, 'array', []); }
}

function parseCommandLine(argv) {
  const actions = Object.keys(ACTION_KEYS);
  if (argv.length < 1 || argv.length > 2 || argv[0] === '-h' || argv[0] === '--help') {
    throw new UsageError(`usage: client.js {${actions.join('|')}} JSON|-|@FILE`);
  }
  const action = argv[0];
  if (!actions.includes(action)) {
    throw new UsageError(`unknown action '${action}'; known: ${actions.join(', ')}`);
  }
  let text = argv.length === 2 ? argv[1] : '{}';
  let values;
  try {
    if (text === '-') text = fs.readFileSync(0, 'utf8');
    else if (text.startsWith('@')) text = fs.readFileSync(text.slice(1), 'utf8');
    values = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`cannot read the JSON arguments: ${err.message}`);
  }
  if (typeof values !== 'object' || values === null || Array.isArray(values)) {
    throw new UsageError('the JSON arguments must be an object');
  }
  const allowed = new Set([ ...COMMON_KEYS, ...ACTION_KEYS[action] ]);
  const unknown = Object.keys(values).filter(key => !allowed.has(key)).sort();
  if (unknown.length) {
    throw new UsageError(`unknown argument(s) for ${action}: ${unknown.join(', ')}`);
  }
  const args = new Args(values);
  args.requiredStr('endpoint');
  args.list('messages').forEach((spec, index) => {
    if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) {
      throw new UsageError(`messages[${index}] must be an object`);
    }
    const extra = Object.keys(spec).filter(key => !MESSAGE_KEYS.includes(key)).sort();
    if (extra.length) throw new UsageError(`messages[${index}]: unknown key(s) ${extra.join(', ')}`);
  });
  return { action, args };
}

function defaultTimeout(action, args) {
  if (action === 'produce' || action === 'recall') return 60;
  if (action === 'produce-transaction') return args.num('duration_s', 0) + 60;
  if (action === 'simple-consume') return args.num('duration_s', 10) + args.num('await_duration_s', 5) + 60;
  // A push consumer's shutdown waits for its in-flight long polls (up to request timeout + 30 s).
  return args.num('duration_s', 10) + 90;
}

function startWatchdog(seconds) {
  setTimeout(() => {
    emit('error', { error: `watchdog: the action did not finish within ${seconds} s`, error_type: 'Timeout' });
    finish(EXIT_WATCHDOG);
  }, seconds * 1000);
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, Math.max(0, ms)));

// --- the client ---------------------------------------------------------------------------------

function clientOptions(args) {
  const options = {
    endpoints: args.requiredStr('endpoint'),
    namespace: args.str('namespace', ''),
    // The client refuses request timeouts under 1000 ms.
    requestTimeout: Math.max(1000, Math.round(args.num('request_timeout_s', 3) * 1000)),
    sslEnabled: args.bool('tls', false),
  };
  const accessKey = args.str('access_key');
  if (accessKey !== null) {
    options.sessionCredentials = { accessKey, accessSecret: args.str('secret_key', '') };
  }
  return options;
}

function filterExpression(rmq, args) {
  const spec = new Args(args.obj('filter'), 'filter');
  const kind = spec.str('type', 'tag').toLowerCase();
  if (kind !== 'tag' && kind !== 'sql') throw new UsageError('filter: type must be tag or sql');
  return new rmq.FilterExpression(spec.str('expression', '*'), kind === 'tag' ? rmq.FilterType.TAG : rmq.FilterType.SQL);
}

function messageBody(spec) {
  if ('body_base64' in spec.values) return Buffer.from(spec.requiredStr('body_base64'), 'base64');
  if ('body' in spec.values) return Buffer.from(spec.str('body', ''), 'utf8');
  const size = spec.int('body_size', 0);
  if (size > 0) return Buffer.alloc(size, 'x');
  throw new UsageError(`${spec.where}: one of body, body_base64, body_size is required`);
}

function buildMessage(topic, spec) {
  const message = { topic, body: messageBody(spec) };
  const tag = spec.str('tag');
  if (tag !== null) message.tag = tag;
  const keys = spec.values.keys;
  if (keys !== undefined && keys !== null) message.keys = typeof keys === 'string' ? [ keys ] : spec.list('keys');
  const properties = Object.entries(spec.obj('properties'));
  if (properties.length) message.properties = new Map(properties.map(([ k, v ]) => [ k, String(v) ]));
  const group = spec.str('message_group');
  if (group !== null) message.messageGroup = group;
  const deliveryMs = spec.num('delivery_timestamp_ms');
  if (deliveryMs !== null) message.deliveryTimestamp = new Date(deliveryMs);
  return message;
}

function bodyFields(body, emitBody) {
  const data = body ? Buffer.from(body) : Buffer.alloc(0);
  const fields = { body_size: data.length, body_sha256: crypto.createHash('sha256').update(data).digest('hex') };
  if (emitBody) {
    const text = data.toString('utf8');
    if (Buffer.from(text, 'utf8').equals(data)) {
      fields.body = text;
    } else {
      fields.body = null;
      fields.body_base64 = data.toString('base64');
    }
  }
  return fields;
}

const ms = date => (date instanceof Date && !Number.isNaN(date.getTime()) ? date.getTime() : null);

// The client's MessageView reports unset protobuf strings as '' and unset numbers as 0: report null.
function messageFields(view, emitBody = true) {
  return {
    message_id: view.messageId,
    topic: view.topic,
    tag: view.tag || null,
    keys: [ ...(view.keys || []) ].sort(),
    properties: Object.fromEntries(view.properties || []),
    message_group: view.messageGroup || null,
    delivery_attempt: view.deliveryAttempt || null,
    delivery_timestamp_ms: ms(view.deliveryTimestamp),
    born_timestamp_ms: ms(view.bornTimestamp),
    corrupted: Boolean(view.corrupted),
    ...bodyFields(view.body, emitBody),
  };
}

function receiptFields(receipt) {
  return {
    message_id: receipt.messageId,
    transaction_id: receipt.transactionId || null,
    offset: receipt.offset,
    recall_handle: receipt.recallHandle || null,
  };
}

async function start(client, kind) {
  await client.startup();
  emit('started', { client: kind, client_id: client.clientId });
}

async function stop(client, args) {
  if (!args.bool('graceful_shutdown', true)) {
    emit('stopped', { graceful: false });
    return;
  }
  try {
    await client.shutdown();
    emit('stopped', { graceful: true });
  } catch (err) {
    emit('shutdown_error', errorFields(err));
  }
}

// --- actions --------------------------------------------------------------------------------------

async function produce(rmq, args) {
  const topic = args.requiredStr('topic');
  const specs = args.list('messages').map((spec, i) => new Args(spec, `messages[${i}]`));
  const producer = new rmq.Producer({ ...clientOptions(args), topic });
  await start(producer, 'producer');
  let failed = 0;
  try {
    for (const [ index, spec ] of specs.entries()) {
      try {
        const receipt = await producer.send(buildMessage(topic, spec));
        emit('sent', { index, ok: true, ...receiptFields(receipt) });
      } catch (err) {
        if (err instanceof UsageError) throw err;
        failed++;
        emit('sent', { index, ok: false, ...errorFields(err) });
      }
    }
  } finally {
    await stop(producer, args);
  }
  if (failed && !args.bool('allow_failures', false)) {
    throw new ActionFailed(`${failed} of ${specs.length} message(s) were not sent`);
  }
  emit('done', { sent: specs.length - failed, failed });
}

async function produceTransaction(rmq, args) {
  const topic = args.requiredStr('topic');
  const specs = args.list('messages').map((spec, i) => new Args(spec, `messages[${i}]`));
  const defaultDecision = args.str('decision', 'commit');
  for (const spec of specs) {
    if (![ 'commit', 'rollback', 'none' ].includes(spec.str('decision', defaultDecision))) {
      throw new UsageError(`${spec.where}: decision must be commit, rollback or none`);
    }
  }
  const answer = args.str('check_answer', 'commit');
  if (![ 'commit', 'rollback', 'unknown' ].includes(answer)) {
    throw new UsageError('check_answer must be commit, rollback or unknown');
  }
  const checker = {
    async check(view) {
      emit('checked', { answer, ...messageFields(view) });
      if (answer === 'commit') return rmq.TransactionResolution.COMMIT;
      if (answer === 'rollback') return rmq.TransactionResolution.ROLLBACK;
      // The client sends no EndTransaction for an unspecified resolution.
      return rmq.TransactionResolution.TRANSACTION_RESOLUTION_UNSPECIFIED;
    },
  };
  const producer = new rmq.Producer({ ...clientOptions(args), topic, checker });
  await start(producer, 'transaction-producer');
  let failed = 0;
  try {
    for (const [ index, spec ] of specs.entries()) {
      let transaction;
      let receipt;
      try {
        transaction = producer.beginTransaction();
        receipt = await producer.send(buildMessage(topic, spec), transaction);
        emit('sent', { index, ok: true, ...receiptFields(receipt) });
      } catch (err) {
        if (err instanceof UsageError) throw err;
        failed++;
        emit('sent', { index, ok: false, ...errorFields(err) });
        continue;
      }
      const decision = spec.str('decision', defaultDecision);
      if (decision === 'none') continue;
      const ended = { index, message_id: receipt.messageId, resolution: decision };
      try {
        if (decision === 'commit') await transaction.commit();
        else await transaction.rollback();
        emit('end_transaction', { ...ended, ok: true });
      } catch (err) {
        failed++;
        emit('end_transaction', { ...ended, ok: false, ...errorFields(err) });
      }
    }
    await sleep(args.num('duration_s', 0) * 1000);
  } finally {
    await stop(producer, args);
  }
  if (failed && !args.bool('allow_failures', false)) {
    throw new ActionFailed(`${failed} send or end-transaction call(s) failed`);
  }
  emit('done', { messages: specs.length, failed });
}

async function recall(rmq, args) {
  const topic = args.requiredStr('topic');
  const handle = args.requiredStr('recall_handle');
  const producer = new rmq.Producer({ ...clientOptions(args), topic });
  await start(producer, 'producer');
  try {
    let receipt;
    try {
      receipt = await producer.recallMessage(topic, handle);
    } catch (err) {
      emit('recalled', { ok: false, ...errorFields(err) });
      throw new ActionFailed(`recall failed: ${oneLine(err.message)}`);
    }
    emit('recalled', { ok: true, message_id: receipt.messageId });
  } finally {
    await stop(producer, args);
  }
  emit('done');
}

async function simpleConsume(rmq, args) {
  const group = args.requiredStr('group');
  const topic = args.requiredStr('topic');
  const mode = args.str('action', 'ack');
  if (!(mode in SIMPLE_ACTIONS)) throw new UsageError(`action must be one of ${Object.keys(SIMPLE_ACTIONS).join(', ')}`);
  const ackFrom = args.int('ack_from_attempt', SIMPLE_ACTIONS[mode]);
  let changeInvisible = args.num('change_invisible_s');
  if (changeInvisible === null && mode === 'change-invisible') changeInvisible = 1;
  // Whole seconds, as the Python client (the only one limited to them) sends.
  const invisibleMs = Math.max(1, Math.ceil(args.num('invisible_duration_s', 15))) * 1000;
  const awaitMs = Math.max(1, Math.ceil(args.num('await_duration_s', 5))) * 1000;
  const maxMessages = args.int('max_messages', 16);
  const stopAfterReceived = args.int('stop_after_received');
  const stopAfterAcks = args.int('stop_after_acks');
  const maxErrors = args.int('max_consecutive_errors', 5);
  const emitBody = args.bool('emit_body', true);

  const consumer = new rmq.SimpleConsumer({
    ...clientOptions(args),
    consumerGroup: group,
    subscriptions: new Map([[ topic, filterExpression(rmq, args) ]]),
    awaitDuration: awaitMs,
  });
  await start(consumer, 'simple-consumer');
  const deadline = Date.now() + args.num('duration_s', 10) * 1000;
  let received = 0;
  let acked = 0;
  let errors = 0;
  let receiveCalls = 0;
  try {
    while (Date.now() < deadline) {
      if (stopAfterReceived !== null && received >= stopAfterReceived) break;
      if (stopAfterAcks !== null && acked >= stopAfterAcks) break;
      let views;
      try {
        views = await consumer.receive(maxMessages, invisibleMs);
      } catch (err) {
        errors++;
        emit('receive_error', { consecutive: errors, ...errorFields(err) });
        if (errors >= maxErrors) {
          throw new ActionFailed(`${errors} consecutive receive calls failed: ${oneLine(err.message)}`);
        }
        await sleep(Math.min(500, deadline - Date.now()));
        continue;
      }
      errors = 0;
      receiveCalls++;
      if (!views.length) await sleep(Math.min(100, deadline - Date.now()));
      for (const view of views) {
        received++;
        emit('received', messageFields(view, emitBody));
        const attempt = view.deliveryAttempt || 0;
        if (ackFrom !== null && attempt >= ackFrom) {
          const fields = { message_id: view.messageId, delivery_attempt: attempt };
          try {
            await consumer.ack(view);
            acked++;
            emit('acked', { ...fields, ok: true });
          } catch (err) {
            emit('acked', { ...fields, ok: false, ...errorFields(err) });
          }
        } else if (changeInvisible !== null) {
          const seconds = Math.max(1, Math.ceil(changeInvisible));
          const fields = { message_id: view.messageId, invisible_duration_s: seconds };
          try {
            await consumer.changeInvisibleDuration(view, seconds * 1000);
            emit('invisible_changed', { ...fields, ok: true });
          } catch (err) {
            emit('invisible_changed', { ...fields, ok: false, ...errorFields(err) });
          }
        }
      }
    }
  } finally {
    await stop(consumer, args);
  }
  emit('done', { received, acked, receive_calls: receiveCalls });
}

async function pushConsume(rmq, args) {
  const group = args.requiredStr('group');
  const topic = args.requiredStr('topic');
  const behaviour = args.str('behaviour', 'success');
  if (![ 'success', 'fail-always', 'fail-first-n' ].includes(behaviour)) {
    throw new UsageError('behaviour must be success, fail-always or fail-first-n');
  }
  const failFirstN = args.int('fail_first_n', 1);
  const failWith = args.str('fail_with', 'result');
  if (![ 'result', 'exception' ].includes(failWith)) throw new UsageError('fail_with must be result or exception');
  const delayMs = args.num('consume_delay_ms', 0);
  const stopAfter = args.int('stop_after_successes');
  const emitBody = args.bool('emit_body', true);
  args.int('threads', 20); // accepted for symmetry with Python: the Node client has no thread pool

  const invocations = new Map();
  const succeeded = new Set();
  let enough;
  const enoughReached = new Promise(resolve => { enough = resolve; });

  const messageListener = {
    async consume(view) {
      const count = (invocations.get(view.messageId) || 0) + 1;
      invocations.set(view.messageId, count);
      emit('received', { invocation: count, ...messageFields(view, emitBody) });
      if (delayMs > 0) await sleep(delayMs);
      const fail = behaviour === 'fail-always' || (behaviour === 'fail-first-n' && count <= failFirstN);
      emit('consumed', {
        message_id: view.messageId,
        invocation: count,
        delivery_attempt: view.deliveryAttempt || null,
        result: fail ? 'FAILURE' : 'SUCCESS',
      });
      if (fail) {
        if (failWith === 'exception') throw new Error('the handler fails on purpose');
        return rmq.ConsumeResult.FAILURE;
      }
      succeeded.add(view.messageId);
      if (stopAfter !== null && succeeded.size >= stopAfter) enough();
      return rmq.ConsumeResult.SUCCESS;
    },
  };
  const consumer = new rmq.PushConsumer({
    ...clientOptions(args),
    consumerGroup: group,
    subscriptions: new Map([[ topic, filterExpression(rmq, args) ]]),
    messageListener,
  });
  await start(consumer, 'push-consumer');
  try {
    const timedOut = Symbol('timeout');
    const outcome = await Promise.race([ enoughReached, sleep(args.num('duration_s', 10) * 1000).then(() => timedOut) ]);
    if (outcome !== timedOut) await sleep(args.num('linger_s', 1) * 1000);
  } finally {
    await stop(consumer, args);
  }
  let total = 0;
  for (const count of invocations.values()) total += count;
  emit('done', { messages: invocations.size, succeeded: succeeded.size, invocations: total });
}

const ACTIONS = {
  produce,
  'produce-transaction': produceTransaction,
  recall,
  'simple-consume': simpleConsume,
  'push-consume': pushConsume,
};

function loadClient() {
  const rmq = require('rocketmq-client-nodejs');
  const definitions = require('rocketmq-client-nodejs/proto/apache/rocketmq/v2/definition_pb');
  return { ...rmq, FilterType: definitions.FilterType, TransactionResolution: definitions.TransactionResolution };
}

async function main() {
  let action;
  let args;
  try {
    ({ action, args } = parseCommandLine(process.argv.slice(2)));
    startWatchdog(args.num('timeout_s') ?? defaultTimeout(action, args));
  } catch (err) {
    emit('error', { error: err.message, error_type: 'UsageError' });
    return finish(EXIT_USAGE);
  }
  process.on('unhandledRejection', reason => {
    // Node would otherwise end the process without an event; the client leaves a few of these.
    emit('internal_error', { source: 'unhandledRejection', ...errorFields(reason) });
  });
  process.on('uncaughtException', err => {
    emit('error', { source: 'uncaughtException', ...errorFields(err) });
    finish(EXIT_FAILED);
  });
  try {
    await ACTIONS[action](loadClient(), args);
  } catch (err) {
    if (err instanceof UsageError) {
      emit('error', { error: err.message, error_type: 'UsageError' });
      return finish(EXIT_USAGE);
    }
    if (err instanceof ActionFailed) {
      emit('error', { error: err.message, error_type: 'ActionFailed' });
    } else {
      emit('error', errorFields(err));
    }
    return finish(EXIT_FAILED);
  }
  return finish(EXIT_OK);
}

main();
