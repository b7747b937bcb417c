// The type each generated file checks a dashboard against: @grafana/schema's `Dashboard`,
// as it reads in JSON.
import type { Dashboard } from '@grafana/schema';

/**
 * `T` as JSON spells it. @grafana/schema declares closed sets such as `ThresholdsMode` as
 * TypeScript string enums, which a JSON string such as "absolute" cannot name; this maps each
 * string enum to the union of its values (`${ThresholdsMode}` = "absolute" | "percentage")
 * and leaves every other field, optional marker and nesting as the schema has them, so
 * excess-property and type checks still apply.
 */
export type Json<T> = 0 extends 1 & T
  ? T // `any` stays `any`
  : T extends string
    ? `${T}`
    : T extends number | boolean | bigint | null | undefined
      ? T
      : T extends ReadonlyArray<infer U>
        ? Array<Json<U>>
        : T extends object
          ? { [K in keyof T]: Json<T[K]> }
          : T;

/** A Grafana dashboard model as stored in a JSON file (without the export's `__inputs`). */
export type DashboardJson = Json<Dashboard>;
