// A Redis storage adapter for oidc-provider (its documented production shape: the provider
// keeps nothing in process memory), written against the Adapter interface the provider
// documents (upsert / find / findByUid / findByUserCode / consume / destroy / revokeByGrantId).
// Used by server.mjs when REDIS_URL is set, so `make bench` can compare idp on PostgreSQL +
// Redis with a peer that also stores every session, code, token and grant out of process.
//
// Shape: one key per model instance ("<Model>:<id>"), JSON, with the provider's expiry as the
// key's TTL. Codes and refresh tokens carry a `consumed` timestamp set by consume(). Every
// instance that belongs to a Grant is listed in a set "grant:<grantId>", so revoking the
// Grant deletes them all (refresh-token reuse, /revoke); sessions are findable by uid
// ("uid:<uid>" -> id). Each write is one MULTI, as the provider's own example does.

import Redis from 'ioredis';

const GRANTABLE = new Set(['AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest']);
const CONSUMABLE = new Set(['AuthorizationCode', 'RefreshToken', 'DeviceCode', 'BackchannelAuthenticationRequest']);

let client;

function connection(url) {
  client ??= new Redis(url, { keyPrefix: 'peer:', enableAutoPipelining: true });
  return client;
}

export function redisAdapter(url) {
  const redis = connection(url);

  return class RedisAdapter {
    constructor(name) {
      this.name = name;
    }

    key(id) {
      return `${this.name}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      const key = this.key(id);
      const multi = redis.multi();
      if (CONSUMABLE.has(this.name)) {
        multi.hset(key, { payload: JSON.stringify(payload) });
      } else {
        multi.set(key, JSON.stringify(payload));
      }
      if (expiresIn) multi.expire(key, expiresIn);
      if (GRANTABLE.has(this.name) && payload.grantId) {
        const grantKey = `grant:${payload.grantId}`;
        multi.rpush(grantKey, key);
        // the grant's list lives as long as its longest member
        const ttl = await redis.ttl(grantKey);
        if (expiresIn > ttl) multi.expire(grantKey, expiresIn);
      }
      if (payload.userCode) {
        multi.set(`userCode:${payload.userCode}`, id);
        if (expiresIn) multi.expire(`userCode:${payload.userCode}`, expiresIn);
      }
      if (payload.uid) {
        multi.set(`uid:${payload.uid}`, id);
        if (expiresIn) multi.expire(`uid:${payload.uid}`, expiresIn);
      }
      await multi.exec();
    }

    async find(id) {
      const key = this.key(id);
      if (CONSUMABLE.has(this.name)) {
        const { payload, consumed } = await redis.hgetall(key);
        if (!payload) return undefined;
        const found = JSON.parse(payload);
        if (consumed) found.consumed = Number(consumed);
        return found;
      }
      const data = await redis.get(key);
      return data ? JSON.parse(data) : undefined;
    }

    async findByUid(uid) {
      const id = await redis.get(`uid:${uid}`);
      return id ? this.find(id) : undefined;
    }

    async findByUserCode(userCode) {
      const id = await redis.get(`userCode:${userCode}`);
      return id ? this.find(id) : undefined;
    }

    async consume(id) {
      await redis.hset(this.key(id), 'consumed', Math.floor(Date.now() / 1000));
    }

    async destroy(id) {
      await redis.del(this.key(id));
    }

    async revokeByGrantId(grantId) {
      const grantKey = `grant:${grantId}`;
      const members = await redis.lrange(grantKey, 0, -1);
      // keys in the list already carry the prefix-less names; ioredis adds keyPrefix to each
      const multi = redis.multi();
      for (const member of members) multi.del(member);
      multi.del(grantKey);
      await multi.exec();
    }
  };
}

export async function flushPeerKeys(url) {
  // a fresh run starts empty: delete what an earlier peer left under our prefix
  const plain = new Redis(url);
  let cursor = '0';
  do {
    const [next, keys] = await plain.scan(cursor, 'MATCH', 'peer:*', 'COUNT', 1000);
    if (keys.length) await plain.del(...keys);
    cursor = next;
  } while (cursor !== '0');
  await plain.quit();
}
