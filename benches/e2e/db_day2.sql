-- The next day of the benchmark database (benches/e2e/run.sh): about 1% of the rows of every table updated
-- (80% of them among the newest 10% of rows, the rest anywhere, as in a live ERP), 0.2% of the messages
-- deleted, VACUUM (so the new rows below land in the space freed all over the tables), then about 1% new rows.
\set ON_ERROR_STOP on
SET max_parallel_workers_per_gather = 0;
SET synchronous_commit = off;
SELECT setseed(0.1125);

-- Picks about 1% of the ids 1..n: 8% of the newest tenth plus 0.2% of everything, spread by a multiplicative hash.
CREATE FUNCTION bench_pick(id int, n int) RETURNS boolean LANGUAGE sql IMMUTABLE AS $$
  SELECT (id > n * 0.9 AND (id::bigint * 2654435761) % 100 < 8) OR (id::bigint * 2654435761) % 1000 < 2
$$;

UPDATE res_partner SET phone = '+32 ' || (480000000 + (random() * 9999999)::int), write_uid = 3,
  write_date = timestamp '2026-11-24 10:00' WHERE bench_pick(id, 100000);
UPDATE sale_order SET state = 'done', note = coalesce(note, '') || ' ' || bench_words(3),
  write_date = timestamp '2026-11-24 10:00' WHERE bench_pick(id, 200000);
UPDATE sale_order_line SET product_uom_qty = product_uom_qty + 1,
  price_subtotal = round((product_uom_qty + 1) * price_unit, 2),
  price_total = round((product_uom_qty + 1) * price_unit * 1.21, 2),
  write_date = timestamp '2026-11-24 10:00' WHERE bench_pick(id, 800000);
UPDATE account_move SET state = 'posted', write_date = timestamp '2026-11-24 10:00' WHERE bench_pick(id, 200000);
UPDATE account_move_line SET reconciled = true, write_date = timestamp '2026-11-24 10:00'
  WHERE bench_pick(id, 800000);
DELETE FROM mail_message WHERE (id::bigint * 2654435761) % 1000 < 2;
VACUUM;

INSERT INTO res_partner (name, display_name, email, phone, street, city, zip, country_id, company_id,
    is_company, active, create_uid, create_date, write_uid, write_date)
SELECT 'Partner ' || i, 'Partner ' || i, 'partner' || i || '@example.org', '+32 470000000',
  i || ' ' || initcap(bench_words(2)) || ' street', initcap(bench_words(1)), '1000', 21, 1, false, true,
  3, timestamp '2026-11-24 09:00' + i * interval '1 ms', 3, timestamp '2026-11-24 09:00'
FROM generate_series(100001, 101000) i;
INSERT INTO sale_order (name, partner_id, date_order, state, amount_untaxed, amount_tax, amount_total,
    currency_id, user_id, note, create_date, write_date)
SELECT 'SO' || lpad(i::text, 7, '0'), 1 + (random() * 100999)::int, timestamp '2026-11-24 09:00',
  'draft', a, round(a * 0.21, 2), round(a * 1.21, 2), 1, 2 + i % 20, bench_words(8),
  timestamp '2026-11-24 09:00', timestamp '2026-11-24 09:00'
FROM (SELECT i, round((random() * 5000)::numeric, 2) a FROM generate_series(200001, 202000) i) s;
INSERT INTO sale_order_line (order_id, sequence, product_id, name, product_uom_qty, price_unit, discount,
    price_subtotal, price_total, state, create_date, write_date)
SELECT 1 + i / 4, 10 * (i % 4), p, '[P' || lpad(p::text, 6, '0') || '] ' || bench_words(4), q, u, 0,
  round(q * u, 2), round(q * u * 1.21, 2), 'draft', timestamp '2026-11-24 09:00', timestamp '2026-11-24 09:00'
FROM (SELECT i, 1 + (random() * 19999)::int p, (1 + (random() * 20)::int)::numeric q,
        round((random() * 300)::numeric, 2) u FROM generate_series(800000, 807999) i) s;
INSERT INTO account_move (name, move_type, partner_id, invoice_date, state, amount_total, ref, invoice_origin,
    create_date, write_date)
SELECT 'INV/2026/' || lpad(i::text, 6, '0'), 'out_invoice', 1 + (random() * 100999)::int, date '2026-11-24',
  'draft', round((random() * 6000)::numeric, 2), 'REF-' || md5(i::text), 'SO' || lpad(i::text, 7, '0'),
  timestamp '2026-11-24 09:00', timestamp '2026-11-24 09:00'
FROM generate_series(200001, 202000) i;
INSERT INTO account_move_line (move_id, account_id, partner_id, name, debit, credit, balance, quantity,
    price_unit, date, reconciled, create_date, write_date)
SELECT 1 + i / 4, 100 + (random() * 80)::int, 1 + (random() * 100999)::int, bench_words(3),
  CASE WHEN i % 2 = 0 THEN a ELSE 0 END, CASE WHEN i % 2 = 1 THEN a ELSE 0 END,
  CASE WHEN i % 2 = 0 THEN a ELSE -a END, 1 + (random() * 10)::int, a, date '2026-11-24', false,
  timestamp '2026-11-24 09:00', timestamp '2026-11-24 09:00'
FROM (SELECT i, round((random() * 3000)::numeric, 2) a FROM generate_series(800000, 807999) i) s;
INSERT INTO mail_message (model, res_id, message_type, subject, body, author_id, date, create_date)
SELECT (ARRAY['sale.order','account.move','res.partner','project.task'])[1 + i % 4], 1 + (random() * 201999)::int,
  (ARRAY['comment','notification','email'])[1 + i % 3], CASE WHEN i % 3 = 2 THEN initcap(bench_words(5)) END,
  '<p>' || bench_words(10 + (random() * 80)::int) || '</p>', 1 + (random() * 100999)::int,
  timestamp '2026-11-24 09:00', timestamp '2026-11-24 09:00'
FROM generate_series(150001, 151500) i;
INSERT INTO ir_attachment (name, res_model, res_id, store_fname, file_size, checksum, mimetype, create_date)
SELECT bench_words(2) || '.pdf', 'sale.order', 200000 + i % 2000,
  substr(md5(i::text), 1, 2) || '/' || md5(i::text) || substr(md5(i::text), 1, 8), (random() * 2000000)::int,
  md5(i::text) || substr(md5(i::text), 1, 8), 'application/pdf', timestamp '2026-11-24 09:00'
FROM generate_series(4001, 4040) i;
VACUUM ANALYZE;
DROP FUNCTION bench_pick(int, int);
DROP FUNCTION bench_words(int);
