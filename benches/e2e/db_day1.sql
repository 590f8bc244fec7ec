-- Day 1 of the benchmark database (benches/e2e/run.sh): Odoo-like tables filled with generate_series.
-- Deterministic: one backend, no parallel workers, a fixed seed. About 330 MB as `pg_dump -Fc -Z0`.
\set ON_ERROR_STOP on
SET max_parallel_workers_per_gather = 0;
SET synchronous_commit = off;
SELECT setseed(0.1124);

-- n business words, picked at random (also used by db_day2.sql; dropped at its end).
CREATE FUNCTION bench_words(n int) RETURNS text LANGUAGE sql VOLATILE AS $$
  SELECT string_agg(w[1 + floor(random() * cardinality(w))::int], ' ')
  FROM (SELECT ARRAY['invoice','order','delivery','customer','payment','product','quantity','discount',
    'shipping','warehouse','stock','account','journal','tax','partner','contact','address','street','city',
    'please','find','attached','the','your','our','for','and','with','regarding','confirm','confirmed','draft',
    'posted','cancelled','reference','due','date','amount','total','balance','reconcile','reconciled','bank',
    'statement','line','lines','meeting','call','email','note','follow','up','next','week','month','quarter',
    'report','sales','team','lead','opportunity','quotation','sent','signed','validated','received','return',
    'refund','credit','debit','vendor','bill','purchase','request','approved','rejected','pending','urgent',
    'thanks','regards','hello','dear','sir','madam','kind','best','we','have','has','been','will','be','is',
    'are','to','of','in','on','at','by','from','as','this','that','these','unit','price','currency','euro',
    'dollar','project','task','timesheet','hours','employee','leave','expense','asset','depreciation',
    'analytic','budget','forecast','inventory','location','lot','serial','package','carrier','tracking'] w) a,
    generate_series(1, n)
$$;

CREATE TABLE res_partner (
  id serial PRIMARY KEY, name varchar NOT NULL, display_name varchar, email varchar, phone varchar,
  street varchar, city varchar, zip varchar, country_id int, company_id int, is_company boolean,
  active boolean, comment text, create_uid int, create_date timestamp, write_uid int, write_date timestamp);
INSERT INTO res_partner (name, display_name, email, phone, street, city, zip, country_id, company_id,
    is_company, active, comment, create_uid, create_date, write_uid, write_date)
SELECT 'Partner ' || i, 'Partner ' || i || ', ' || initcap(bench_words(2)),
  'partner' || i || '@example-' || (i % 997) || '.com', '+32 ' || (470000000 + (random() * 9999999)::int),
  (1 + i % 300) || ' ' || initcap(bench_words(2)) || ' street', initcap(bench_words(1)),
  lpad(((i * 7) % 9999)::text, 4, '0'), 1 + i % 240, 1, i % 10 = 0, true,
  CASE WHEN i % 4 = 0 THEN bench_words(12) END, 2, timestamp '2020-01-01' + i * interval '17 min', 2,
  timestamp '2020-01-01' + i * interval '17 min'
FROM generate_series(1, 100000) i;

CREATE TABLE product_template (
  id serial PRIMARY KEY, name varchar NOT NULL, default_code varchar, list_price numeric(12,2),
  standard_price numeric(12,2), type varchar, categ_id int, description_sale text, active boolean,
  create_date timestamp, write_date timestamp);
INSERT INTO product_template (name, default_code, list_price, standard_price, type, categ_id,
    description_sale, active, create_date, write_date)
SELECT initcap(bench_words(3)), 'P' || lpad(i::text, 6, '0'), round((random() * 500)::numeric, 2),
  round((random() * 300)::numeric, 2), (ARRAY['consu','service','product'])[1 + i % 3], 1 + i % 50,
  bench_words(20), true, timestamp '2020-01-01' + i * interval '1 hour', timestamp '2020-01-01' + i * interval '1 hour'
FROM generate_series(1, 20000) i;

CREATE TABLE sale_order (
  id serial PRIMARY KEY, name varchar NOT NULL, partner_id int, date_order timestamp, state varchar,
  amount_untaxed numeric(12,2), amount_tax numeric(12,2), amount_total numeric(12,2), currency_id int,
  user_id int, note text, create_date timestamp, write_date timestamp);
INSERT INTO sale_order (name, partner_id, date_order, state, amount_untaxed, amount_tax, amount_total,
    currency_id, user_id, note, create_date, write_date)
SELECT 'SO' || lpad(i::text, 7, '0'), 1 + (random() * 99999)::int, timestamp '2021-01-01' + i * interval '4 min',
  (ARRAY['draft','sent','sale','done','cancel'])[1 + (random() * 4)::int], a, round(a * 0.21, 2),
  round(a * 1.21, 2), 1, 2 + i % 20, CASE WHEN i % 3 = 0 THEN bench_words(8) END,
  timestamp '2021-01-01' + i * interval '4 min', timestamp '2021-01-01' + i * interval '4 min'
FROM (SELECT i, round((random() * 5000)::numeric, 2) a FROM generate_series(1, 200000) i) s;

CREATE TABLE sale_order_line (
  id serial PRIMARY KEY, order_id int NOT NULL, sequence int, product_id int, name text,
  product_uom_qty numeric(12,3), price_unit numeric(12,2), discount numeric(5,2), price_subtotal numeric(12,2),
  price_total numeric(12,2), state varchar, create_date timestamp, write_date timestamp);
INSERT INTO sale_order_line (order_id, sequence, product_id, name, product_uom_qty, price_unit, discount,
    price_subtotal, price_total, state, create_date, write_date)
SELECT 1 + i / 4, 10 * (i % 4), p, '[P' || lpad(p::text, 6, '0') || '] ' || bench_words(4), q, u, 0,
  round(q * u, 2), round(q * u * 1.21, 2), 'sale', timestamp '2021-01-01' + i * interval '1 min',
  timestamp '2021-01-01' + i * interval '1 min'
FROM (SELECT i, 1 + (random() * 19999)::int p, (1 + (random() * 20)::int)::numeric q,
        round((random() * 300)::numeric, 2) u FROM generate_series(0, 799999) i) s;

CREATE TABLE account_move (
  id serial PRIMARY KEY, name varchar, move_type varchar, partner_id int, invoice_date date, state varchar,
  amount_total numeric(12,2), ref varchar, invoice_origin varchar, create_date timestamp, write_date timestamp);
INSERT INTO account_move (name, move_type, partner_id, invoice_date, state, amount_total, ref, invoice_origin,
    create_date, write_date)
SELECT 'INV/' || (2021 + i / 70000) || '/' || lpad(i::text, 6, '0'), 'out_invoice', 1 + (random() * 99999)::int,
  date '2021-01-01' + i / 200, (ARRAY['draft','posted','posted','posted','cancel'])[1 + (random() * 4)::int],
  round((random() * 6000)::numeric, 2), CASE WHEN i % 2 = 0 THEN 'REF-' || md5(i::text) END,
  'SO' || lpad(i::text, 7, '0'), timestamp '2021-01-01' + i * interval '4 min',
  timestamp '2021-01-01' + i * interval '4 min'
FROM generate_series(1, 200000) i;

CREATE TABLE account_move_line (
  id serial PRIMARY KEY, move_id int NOT NULL, account_id int, partner_id int, name varchar,
  debit numeric(12,2), credit numeric(12,2), balance numeric(12,2), quantity numeric(12,3),
  price_unit numeric(12,2), date date, reconciled boolean, create_date timestamp, write_date timestamp);
INSERT INTO account_move_line (move_id, account_id, partner_id, name, debit, credit, balance, quantity,
    price_unit, date, reconciled, create_date, write_date)
SELECT 1 + i / 4, 100 + (random() * 80)::int, 1 + (random() * 99999)::int, bench_words(3),
  CASE WHEN i % 2 = 0 THEN a ELSE 0 END, CASE WHEN i % 2 = 1 THEN a ELSE 0 END,
  CASE WHEN i % 2 = 0 THEN a ELSE -a END, 1 + (random() * 10)::int, a, date '2021-01-01' + i / 800,
  random() < 0.7, timestamp '2021-01-01' + i * interval '1 min', timestamp '2021-01-01' + i * interval '1 min'
FROM (SELECT i, round((random() * 3000)::numeric, 2) a FROM generate_series(0, 799999) i) s;

CREATE TABLE mail_message (
  id serial PRIMARY KEY, model varchar, res_id int, message_type varchar, subject varchar, body text,
  author_id int, date timestamp, create_date timestamp);
INSERT INTO mail_message (model, res_id, message_type, subject, body, author_id, date, create_date)
SELECT (ARRAY['sale.order','account.move','res.partner','project.task'])[1 + i % 4], 1 + (random() * 199999)::int,
  (ARRAY['comment','notification','email'])[1 + i % 3], CASE WHEN i % 3 = 2 THEN initcap(bench_words(5)) END,
  '<p>' || bench_words(10 + (random() * 80)::int) || '</p>', 1 + (random() * 99999)::int,
  timestamp '2021-01-01' + i * interval '3 min', timestamp '2021-01-01' + i * interval '3 min'
FROM generate_series(1, 150000) i;

CREATE TABLE ir_attachment (
  id serial PRIMARY KEY, name varchar, res_model varchar, res_id int, store_fname varchar, file_size int,
  checksum varchar, mimetype varchar, create_date timestamp);
INSERT INTO ir_attachment (name, res_model, res_id, store_fname, file_size, checksum, mimetype, create_date)
SELECT bench_words(2) || '.pdf', 'sale.order', 1 + (random() * 199999)::int,
  substr(md5(i::text), 1, 2) || '/' || md5(i::text) || substr(md5(i::text), 1, 8), (random() * 2000000)::int,
  md5(i::text) || substr(md5(i::text), 1, 8), 'application/pdf', timestamp '2021-01-01' + i * interval '1 hour'
FROM generate_series(1, 4000) i;

CREATE INDEX ON sale_order (partner_id);
CREATE INDEX ON sale_order_line (order_id);
CREATE INDEX ON account_move (partner_id);
CREATE INDEX ON account_move_line (move_id);
CREATE INDEX ON mail_message (model, res_id);
VACUUM ANALYZE;
