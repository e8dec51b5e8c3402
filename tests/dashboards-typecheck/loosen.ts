// A dashboard JSON file cannot name TypeScript enum members: it says "absolute" where the type
// of @grafana/schema says ThresholdsMode.Absolute, and 1 where it says DashboardCursorSync.Crosshair.
// Loosen<T> is T with every string enum replaced by the union of its values and every numeric
// enum by number; everything else (required fields, field types, unknown fields) stays as strict.
export type Loosen<T> = T extends string
  ? `${T}`
  : T extends number
    ? number
    : T extends boolean
      ? boolean
      : T extends null | undefined
        ? T
        : T extends ReadonlyArray<infer U>
          ? Array<Loosen<U>>
          : T extends (...args: never[]) => unknown
            ? T
            : T extends object
              ? { [K in keyof T]: Loosen<T[K]> }
              : T;
