/**
 * The small sample data set the DuckDB engine generates at start-up: a shop with regions,
 * customers, products and a year of orders, plus a `sales` view. Deterministic (values come from
 * `hash()`, not `random()`), so examples and tests can rely on the numbers.
 */

export const SAMPLE_COUNTS = { customers: 1_000, products: 50, orders: 200_000 } as const;

export const SAMPLE_TABLES = ['customers', 'orders', 'products', 'sales'] as const;

export const SAMPLE_DATA_SQL: readonly string[] = [
  `CREATE TABLE customers AS
   SELECT i::INTEGER AS id,
          'Customer ' || lpad(i::VARCHAR, 4, '0') AS name,
          ['North', 'South', 'East', 'West', 'Central'][(1 + hash(i, 'region') % 5)::INTEGER] AS region,
          DATE '2020-01-01' + (hash(i, 'signup') % 1500)::INTEGER AS signed_up
   FROM range(1, ${SAMPLE_COUNTS.customers + 1}) r(i)`,
  `CREATE TABLE products AS
   SELECT i::INTEGER AS id,
          ['Books', 'Games', 'Garden', 'Kitchen', 'Toys'][(1 + i % 5)::INTEGER] AS category,
          'Product ' || lpad(i::VARCHAR, 2, '0') AS name,
          (5 + (hash(i, 'price') % 9500) / 100)::DECIMAL(10, 2) AS price
   FROM range(1, ${SAMPLE_COUNTS.products + 1}) r(i)`,
  `CREATE TABLE orders AS
   SELECT i::INTEGER AS id,
          (1 + hash(i, 'customer') % ${SAMPLE_COUNTS.customers})::INTEGER AS customer_id,
          (1 + hash(i, 'product') % ${SAMPLE_COUNTS.products})::INTEGER AS product_id,
          (1 + hash(i, 'quantity') % 5)::INTEGER AS quantity,
          TIMESTAMP '2024-01-01' + to_seconds((hash(i, 'time') % (366 * 86400))::BIGINT) AS ordered_at
   FROM range(1, ${SAMPLE_COUNTS.orders + 1}) r(i)`,
  `CREATE VIEW sales AS
   SELECT o.id, o.ordered_at, c.region, p.category, o.quantity, o.quantity * p.price AS amount
   FROM orders o JOIN customers c ON c.id = o.customer_id JOIN products p ON p.id = o.product_id`,
];

/**
 * A heavy analytics query on the sample data: pairs of orders whose products fall in the same of
 * `buckets` buckets (`product_id % buckets`). With 50 buckets, one per product, that is about 800
 * million pairs, seconds of work for DuckDB; fewer buckets, proportionally more. `sample` keeps
 * the left side to that fraction of the products (the same query shape, that fraction of the
 * work: handy to time a machine). Its join returns no row until it is done, so its liveness
 * comes from the watchdog's side probes.
 */
export function longAnalyticsQuery(buckets: number = SAMPLE_COUNTS.products, sample = 1): string {
  if (!Number.isInteger(buckets) || buckets < 1) {
    throw new RangeError(`buckets must be a positive integer, got ${buckets}`);
  }
  const where =
    sample >= 1
      ? ''
      : `\nWHERE a.product_id <= ${Math.max(1, Math.round(sample * SAMPLE_COUNTS.products))}`;
  return `SELECT p.category, count(*) AS order_pairs, sum(a.quantity * b.quantity) AS weight
FROM orders a JOIN orders b ON a.product_id % ${buckets} = b.product_id % ${buckets}
JOIN products p ON p.id = a.product_id${where}
GROUP BY p.category ORDER BY p.category`;
}
