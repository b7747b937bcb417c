// What Grafana's "Export for sharing externally" writes under `__inputs` for a data source
// (and what its import reads). @grafana/schema has no type for it, so it is declared here;
// the generated files check each dashboard's `__inputs` against it.
export interface ExportInput {
  /** Placeholder name; the dashboard references it as `${name}`, e.g. `DS_INFLUXDB`. */
  name: string;
  /** Label the import form shows beside the data source picker. */
  label: string;
  description: string;
  type: 'datasource';
  /** Plugin id of the data sources the import form offers, e.g. `influxdb`. */
  pluginId: string;
  pluginName: string;
}
